"""The triangle loss against a direct transcription of its formulas."""

import math

import numpy as np
import pytest
import torch
from tiny import config

from progressive.config.sections import LossConfig
from progressive.train import loss


def reference_joint(x, x_rec, mu, logvar, z, mu_f, logvar_f, e_fake, res, w):
    """Element by element, in float64 numpy."""
    x, x_rec, mu, logvar, z, mu_f, logvar_f, e_fake = (
        t.double().numpy() for t in (x, x_rec, mu, logvar, z, mu_f, logvar_f, e_fake)
    )
    n, d = mu.shape
    rec = sum(((x[i] - x_rec[i]) ** 2).sum() for i in range(n)) / n
    kl = 0.0
    for i in range(n):
        for j in range(d):
            var = math.exp(logvar[i, j])
            kl += 0.5 * (mu[i, j] ** 2 + var - 1 - logvar[i, j])
    kl /= n * d
    nll = 0.0
    for i in range(n):
        for j in range(d):
            nll += 0.5 * logvar_f[i, j] + 0.5 * (z[i, j] - mu_f[i, j]) ** 2 / math.exp(
                logvar_f[i, j]
            )
    nll /= n
    marginal = 0.0
    for j in range(d):
        m = mu[:, j].mean()
        v = ((mu[:, j] - m) ** 2).sum() / (n - 1) + np.exp(logvar[:, j]).mean()
        marginal += 0.5 * (m**2 + v - 1 - math.log(v))
    half = n // 2
    decorrelation = 0.0
    if half >= 2:
        a, b = mu[:half], mu[half : 2 * half]
        for i in range(d):
            for j in range(i + 1, d):
                cov_a = ((a[:, i] - a[:, i].mean()) * (a[:, j] - a[:, j].mean())).sum() / (half - 1)
                cov_b = ((b[:, i] - b[:, i].mean()) * (b[:, j] - b[:, j].mean())).sum() / (half - 1)
                decorrelation += cov_a * cov_b
    scale = w.rec * ((w.rec_ref_res / res) ** 2 if w.rec_scaling == "fixed" else 1.0)
    total = scale * rec + w.kl * kl + w.latent_nll * nll + w.energy * e_fake.mean()
    total += w.marginal_kl * marginal + w.code_decorrelation * decorrelation
    return total, rec, kl, nll, marginal, decorrelation


def test_joint_loss_matches_formula():
    g = torch.Generator().manual_seed(0)
    n, d, res = 9, 7, 8
    x, x_rec = (
        torch.rand(n, 3, res, res, generator=g) * 2 - 1,
        torch.randn(n, 3, res, res, generator=g),
    )
    mu, logvar, z = (torch.randn(n, d, generator=g) for _ in range(3))
    mu_f, logvar_f = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    e_fake = torch.randn(n, generator=g)
    for scaling in ("fixed", "sum"):
        over = {"rec_scaling": scaling, "kl": 0.7, "energy": 1.3, "marginal_kl": 0.6,
                "code_decorrelation": 0.8}
        w = config("demo", loss=over).loss
        got, stats = loss.joint_loss(x, x_rec, mu, logvar, z, mu_f, logvar_f, e_fake, res, w)
        total, rec, kl, nll, marginal, decorrelation = reference_joint(
            x, x_rec, mu, logvar, z, mu_f, logvar_f, e_fake, res, w
        )
        assert np.isclose(got.item(), total, rtol=1e-5)
        assert np.isclose(stats["rec"].item(), rec, rtol=1e-5)
        assert np.isclose(stats["kl"].item(), kl, rtol=1e-5)
        assert np.isclose(stats["latent_nll"].item(), nll, rtol=1e-5)
        assert np.isclose(stats["marginal_kl"].item(), marginal, rtol=1e-5)
        assert np.isclose(stats["code_decorrelation"].item(), decorrelation, rtol=1e-5)


def check_half_batch_estimate(estimate, batches, expected, null_batches, too_few):
    """`estimate` averages to `expected` over `batches` and to 0 over `null_batches`, is 0 for a
    batch of `too_few` codes, and passes gradients to the codes."""
    def mean_over(many: torch.Tensor) -> float:
        return torch.stack([estimate(b) for b in many]).mean().item()

    assert abs(mean_over(batches) - expected) < 0.05 * expected
    assert abs(mean_over(null_batches)) < 0.02
    assert estimate(torch.randn(too_few, batches.shape[-1])).item() == 0.0  # too few to split
    mu = batches[0].clone().requires_grad_(True)
    estimate(mu).backward()
    assert mu.grad.abs().sum() > 0


def test_code_decorrelation_is_unbiased_for_the_squared_covariances():
    g = torch.Generator().manual_seed(5)
    d = 4
    mix = torch.eye(d)
    mix[1, 0] = mix[3, 2] = 0.8  # dimension 1 follows 0, dimension 3 follows 2
    cov = mix @ mix.T
    expected = torch.triu(cov.square(), diagonal=1).sum().item()  # 2 * 0.8^2
    batches = torch.randn(20000, 8, d, generator=g) @ mix.T
    unrelated = torch.randn(20000, 8, d, generator=g)
    check_half_batch_estimate(loss.code_decorrelation, batches, expected, unrelated, too_few=3)
    assert config("demo").loss.code_decorrelation == 1.0
    assert config("cifar10").loss.code_decorrelation == 0.0  # the paper's loss


def test_marginal_kl_charges_codes_that_drift_off_the_prior_together():
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(16, 6, generator=g), torch.randn(16, 6, generator=g) * 0.3
    shift = torch.tensor([3.0, 0.0, -1.0, 0.0, 0.5, 0.0])
    base = loss.marginal_kl(mu, logvar)
    moved = loss.marginal_kl(mu + shift, logvar)  # every code moved alike: only the mean changes
    m = mu.mean(0)
    assert moved.item() - base.item() == pytest.approx(
        0.5 * ((m + shift).square().sum() - m.square().sum()).item(), rel=1e-4
    )
    # codes spread exactly as the prior (mean 0, variance 1 per dimension) cost nothing
    z = torch.randn(4000, 6, generator=g)
    z = (z - z.mean(0)) / z.std(0)
    assert loss.marginal_kl(z * (1 - 1e-6), torch.full_like(z, -30.0)).item() < 1e-6
    # the paper's presets keep the reference objective without it
    assert config("cifar10").loss.marginal_kl == 0.0


def test_energy_loss_matches_formula():
    e_real, e_fake = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 4.0, -1.0])
    w = LossConfig(energy_drift=0.01, energy_drift_fake=0.0)
    got, stats = loss.energy_loss(e_real, e_fake, w)
    want = (1 - 2 + 0.5) / 3 - (3 + 4 - 1) / 3 + 0.01 * (1 + 4 + 0.25) / 3
    assert got.item() == pytest.approx(want)
    assert stats["energy_real"].item() == pytest.approx(-0.5 / 3)



def test_rec_scaling_keeps_the_term_constant_across_stages():
    w = config("demo").loss
    for res in (4, 8, 16, 32, 64):
        # A summed error grows with the pixel count; the fixed scaling undoes exactly that.
        assert loss.rec_scale(res, w) * res * res == w.rec * w.rec_ref_res ** 2
    ref = config("cifar10").loss
    assert ref.rec_scaling == "sum" and loss.rec_scale(32, ref) == 1.0


def test_reference_weights_reproducible_by_configuration():
    cfg = config("cifar10")
    assert cfg.loss.latent_nll == 0.1 and cfg.loss.energy_drift == 0.0
    assert cfg.loss.energy_drift_fake == 0.0  # the raw energy, no penalty on either side
    assert cfg.optim.betas == (0.5, 0.999) and cfg.optim.grad_clip == 100.0
    assert cfg.optim.lr_energy[32] == 1e-4 and cfg.optim.lr_generator[32] == 3e-4
    assert cfg.optim.lr_inference[32] == 3e-4 and cfg.optim.weight_decay_generator == 5e-4
    assert cfg.schedule.batch[32] == 100 and cfg.networks.latent == 100
    # The paper's energy sees only data and samples; the demo's also ranks noise above data.
    assert cfg.loss.energy_outliers == 0.0
    assert config("demo").loss.energy_outliers == 1.0


def test_code_mmd_is_unbiased_near_zero_on_the_prior_and_grows_off_it():
    g = torch.Generator().manual_seed(7)
    same = torch.stack([
        loss.code_mmd(torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g))
        for _ in range(4000)
    ])
    shrunk = torch.stack([
        loss.code_mmd(0.5 * torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g))
        for _ in range(4000)
    ])
    assert abs(same.mean().item()) < 0.1 * shrunk.mean().item()
    assert shrunk.mean().item() > 0
    codes = (0.5 * torch.randn(8, 6, generator=g)).requires_grad_(True)
    loss.code_mmd(codes, torch.randn(8, 6, generator=g)).backward()
    # The gradient spreads shrunk codes outward: it points against them.
    assert (codes.grad * codes.detach()).sum() < 0
    assert loss.code_mmd(torch.randn(1, 6), torch.randn(1, 6)).item() == 0.0
    assert config("demo").loss.code_mmd == 0.0


def test_data_gradient_penalty_is_the_squared_input_gradient_and_trains_the_energy():
    weight = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    x = torch.tensor([[0.5, 0.1, -1.0], [2.0, 0.0, 1.0]], requires_grad=True)
    energy = (x * weight).sum(1) + 0.25 * (x.square() * weight).sum(1)
    penalty = loss.data_gradient_penalty(energy, x)
    # grad_x E = w * (1 + x / 2), squared and summed per image, batch mean.
    want = ((weight * (1 + x / 2)).square().sum(1).mean()).item()
    assert penalty.item() == pytest.approx(want)
    penalty.backward()  # the graph was kept: the penalty reaches the energy's parameters
    assert weight.grad is not None and weight.grad.abs().sum() > 0
