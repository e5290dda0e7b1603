"""The divergence triangle as per-network losses (Han et al. 2019, arXiv 1812.10907).

min over generator and inference, max over energy, of KL(Q||P) + KL(P||Pi) - KL(Q||Pi) gives:
- energy:  mean E(x) - mean E(stopgrad g(z))                         (contrastive divergence)
           + drift * mean E(x)^2 + drift_fake * mean E(g(z))^2
           + r1 / 2 * mean |grad_x E(x)|^2                              (0 by default)
           + outliers * mean softplus(E(x) - E(random-scale noise))  (1; paper presets 0)
- joint:   rec(x, g(mu + sigma*eps)) + KL(q(z|x) || N(0, I))           (KL(Q||P))
           + latent_nll * NLL(z | q(.|g(z))) + energy * mean E(g(z))   (KL(P||Pi))
           + marginal_kl * KL(batch fit of q(z) || N(0, I))
           + code_decorrelation * sum_{i<j} Cov(mu_i, mu_j)^2
           + code_mmd * MMD^2(batch codes mu, the batch's prior draws z)     (0 by default)
The joint loss's gradient w.r.t. the inference model is its loss and w.r.t. the generator the
generator's loss, so one backward pass serves both.

Weighting across resolutions: the reconstruction error summed over pixels grows 4x per stage
while the energy term does not. With `rec_scaling="fixed"` the summed error is multiplied by
(rec_ref_res / res)^2, so the term has the magnitude of a `rec_ref_res` image at every stage and
equals the reference at `rec_ref_res`; `rec_scaling="sum"` is the reference's plain sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from progressive.config.sections import LossConfig
from progressive.model.latents import marginal_kl


def rec_scale(res: int, weights: LossConfig) -> float:
    """Multiplier of the per-image summed squared error at resolution `res`."""
    scale = weights.rec
    if weights.rec_scaling == "fixed":
        scale *= (weights.rec_ref_res / res) ** 2
    return scale


def reconstruction(x: Tensor, x_rec: Tensor, mask: Tensor | None = None) -> Tensor:
    """Squared error summed over pixels and channels, averaged over the batch; with a `mask`
    (N, 1, H, W), 1 = observed, over observed pixels only (the observed data's likelihood)."""
    diff = x.float() - x_rec.float()
    if mask is not None:  # where, not a product: a missing pixel's value never enters
        diff = torch.where(mask.bool(), diff, torch.zeros((), device=diff.device))
    return diff.square().flatten(1).sum(1).mean()


def kl_to_prior(mu: Tensor, logvar: Tensor, reduction: str = "mean") -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), averaged over the batch and, with `reduction` "mean"
    (the reference code), over latent dimensions; "sum" sums them (the ELBO's KL)."""
    mu, logvar = mu.float(), logvar.float()
    kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)
    return kl.sum(1).mean() if reduction == "sum" else kl.mean()


def code_decorrelation(mu: Tensor) -> Tensor:
    """Sum over pairs of latent dimensions of the codes' squared covariance, estimated without
    bias from the batch as the product of its two halves' covariance estimates; 0 below four
    codes.

    The marginal KL holds each dimension's mean and spread at the prior's but not how the
    dimensions move together: codes with unit spread per dimension can crowd into a few
    directions, and most of the prior's samples then fall where no code lies. For unit
    variances, half this sum is the second-order term of the full-covariance KL beyond the
    diagonal one. A batch's own covariance cannot give that KL (its estimate is singular when
    the batch is smaller than the latent); the product of two independent estimates is unbiased
    for each squared covariance at any batch of four or more."""
    halves = _two_halves(mu, least=2)
    if halves is None:
        return torch.zeros((), device=mu.device)
    first, second = (torch.cov(h.T) for h in halves)
    return torch.triu(first * second, diagonal=1).sum()


def _two_halves(mu: Tensor, least: int) -> tuple[Tensor, Tensor] | None:
    """The batch's first and second halves of codes (an odd one left out), at least fp32:
    independent draws, so products of their estimates are unbiased. None below `least` each."""
    half = mu.shape[0] // 2
    if half < least:
        return None
    mu = mu.to(torch.promote_types(mu.dtype, torch.float32))
    return mu[:half], mu[half : 2 * half]


IMQ_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def code_mmd(codes: Tensor, prior: Tensor) -> Tensor:
    """Unbiased squared MMD between the batch's codes and prior samples, inverse multiquadric
    kernels C / (C + |a - b|^2) summed over scales C = 2 d s, s in IMQ_SCALES."""
    dtype = torch.promote_types(codes.dtype, torch.float32)
    a, b = codes.to(dtype), prior.to(dtype)
    n = a.shape[0]
    if n < 2:
        return torch.zeros((), device=a.device)
    d2_aa, d2_bb = torch.cdist(a, a).square(), torch.cdist(b, b).square()
    d2_ab = torch.cdist(a, b).square()
    off = 1.0 - torch.eye(n, device=a.device, dtype=dtype)
    total = torch.zeros((), device=a.device, dtype=dtype)
    for s in IMQ_SCALES:
        c = 2.0 * a.shape[1] * s
        k_aa, k_bb, k_ab = c / (c + d2_aa), c / (c + d2_bb), c / (c + d2_ab)
        total = total + ((k_aa + k_bb) * off).sum() / (n * (n - 1)) - 2.0 * k_ab.mean()
    return total


def latent_nll(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """-log q(z|x) up to a constant: sum_j (logvar_j + (z_j - mu_j)^2 / var_j) / 2, batch mean."""
    z, mu, logvar = z.float(), mu.float(), logvar.float()
    return 0.5 * (logvar + (z - mu).square() * torch.exp(-logvar)).sum(1).mean()


def data_gradient_penalty(energy_real: Tensor, x: Tensor) -> Tensor:
    """Mean over the batch of |grad_x E(x)|^2 at the data (R1 of Mescheder et al. 2018), with
    the graph kept so the penalty trains the energy model; `x` must require grad.

    The contrastive loss constrains only the difference between data and samples, so the
    energy may be arbitrarily steep around the data; a zero gradient there makes the data
    minima of the landscape rather than points on a slope."""
    (grad,) = torch.autograd.grad(energy_real.float().sum(), x, create_graph=True)
    return grad.float().square().flatten(1).sum(1).mean()


def outlier_ranking(energy_real: Tensor, energy_outliers: Tensor) -> Tensor:
    """Mean softplus(E(x) - E(o)) over pairs of a data image and a noise image: the data
    ranked below images no dataset holds, which the generator's samples never show the energy."""
    return F.softplus(energy_real.float() - energy_outliers.float()).mean()


def energy_loss(
    energy_real: Tensor, energy_fake: Tensor, weights: LossConfig
) -> tuple[Tensor, dict]:
    """The energy model's loss: lower energy on data, higher on generated images."""
    e_real, e_fake = energy_real.float(), energy_fake.float()
    loss = e_real.mean() - e_fake.mean()
    if weights.energy_drift:
        loss = loss + weights.energy_drift * e_real.square().mean()
    if weights.energy_drift_fake:
        # The same pull toward zero on generated images: both ends of the scale are held.
        loss = loss + weights.energy_drift_fake * e_fake.square().mean()
    stats = {
        "energy_real": e_real.mean().detach(),
        "energy_fake": e_fake.mean().detach(),
        "loss_energy": loss.detach(),
    }
    return loss, stats


def joint_loss(
    x: Tensor,
    x_rec: Tensor,
    mu: Tensor,
    logvar: Tensor,
    z: Tensor,
    mu_fake: Tensor,
    logvar_fake: Tensor,
    energy_fake: Tensor,
    res: int,
    weights: LossConfig,
    mask: Tensor | None = None,
    batch: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, dict]:
    """The generator's and inference model's loss, every term reported unweighted; `mask`
    restricts the reconstruction term to observed pixels. `batch` is (mu, logvar, z) of the
    whole batch over every process, for the terms that are statistics of the batch (default:
    this process's own)."""
    rec = reconstruction(x, x_rec, mask)
    kl = kl_to_prior(mu, logvar, weights.kl_reduction)
    nll = latent_nll(z, mu_fake, logvar_fake)
    mu, logvar, z = batch or (mu, logvar, z)  # from here on, only batch statistics
    marginal = marginal_kl(mu, logvar)
    e_fake = energy_fake.float().mean()
    loss = (
        rec_scale(res, weights) * rec
        + weights.kl * kl
        + weights.latent_nll * nll
        + weights.energy * e_fake
        + weights.marginal_kl * marginal
    )
    # The decorrelation is reported even unweighted; the MMD, pairwise over the batch, only
    # costs when it is weighted.
    decorrelation = code_decorrelation(mu)
    mmd = code_mmd(mu, z) if weights.code_mmd else torch.zeros((), device=mu.device)
    loss = loss + weights.code_mmd * mmd + weights.code_decorrelation * decorrelation
    stats = {
        "rec": rec.detach(),
        "rec_per_pixel": rec.detach() / _observed_per_image(x, mask),
        "kl": kl.detach(),
        "latent_nll": nll.detach(),
        "marginal_kl": marginal.detach(),
        "code_decorrelation": decorrelation.detach(),
        "code_mmd": mmd.detach(),
        "loss_joint": loss.detach(),
    }
    return loss, stats


def _observed_per_image(x: Tensor, mask: Tensor | None) -> Tensor | int:
    """Observed values per image (pixels times channels), batch mean."""
    if mask is None:
        return x[0].numel()
    return (mask.float().flatten(1).sum(1).mean() * x.shape[1]).clamp(min=1.0)
