"""Quality metrics: PCA baseline, R^2, AUROC, diversity, the synthetic cycle, `evaluate` with
every quality metric, and the reference networks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_use import invoke, model, run_dir  # noqa: F401 (fixtures)
from tiny import TINY_NETWORKS, config, networks_of

from progressive.config.schedule import Schedule
from progressive.config.sections import LossConfig
from progressive.metrics import fidelity as metrics
from progressive.metrics import quality as qm
from progressive.model.reference import ReferenceEnergy, ReferenceGenerator, ReferenceInference
from progressive.model.sampling import energies
from progressive.train import loss
from progressive.train.trainer import Trainer


def test_auroc_matches_pair_counting_with_ties():
    gen = torch.Generator().manual_seed(0)
    inside = torch.randint(0, 6, (40,), generator=gen).float()
    outside = torch.randint(2, 9, (30,), generator=gen).float()
    pairs = (inside[:, None] < outside[None, :]).double() + 0.5 * (
        inside[:, None] == outside[None, :]
    ).double()
    assert qm.auroc(inside, outside) == pytest.approx(pairs.mean().item())
    assert qm.auroc(torch.zeros(5), torch.ones(5)) == 1.0
    assert qm.auroc(torch.ones(5), torch.zeros(5)) == 0.0
    assert qm.auroc(torch.ones(5), torch.ones(7)) == 0.5


def test_r_squared():
    z = torch.randn(200, 4, generator=torch.Generator().manual_seed(1))
    assert qm.r_squared(z, z) == pytest.approx(1.0)
    assert qm.r_squared(z, z.mean(0, keepdim=True).expand_as(z)) == pytest.approx(0.0)
    assert qm.r_squared(z, -z) < -2.9  # residual 4x the variance
    assert 0.7 < qm.r_squared(z, 0.5 * z) < 0.8  # 1 - 0.25


def test_pca_baseline_recovers_low_rank_images_and_improves_with_components():
    gen = torch.Generator().manual_seed(2)
    basis = torch.randn(3, 3 * 8 * 8, generator=gen) * 0.1
    codes = torch.randn(120, 3, generator=gen)
    images = (codes @ basis).view(-1, 3, 8, 8).clamp(-1, 1)
    train, held = images[:100], images[100:]
    assert images.abs().max() < 1  # no clipping: exactly rank 3
    clean = qm.principal_components(train)
    assert qm.pca_baseline(clean, held, 3).mean() < 1e-4  # only uint8 rounding left
    noisy = (images + 0.3 * torch.randn(images.shape, generator=gen)).clamp(-1, 1)
    pca = qm.principal_components(noisy[:100])
    errs = [qm.pca_baseline(pca, noisy[100:], k).mean().item() for k in (1, 3, 20)]
    assert errs[0] > errs[1] > 0


def test_ppca_nll_is_the_gaussian_log_density_of_the_fitted_model():
    gen = torch.Generator().manual_seed(3)
    mixing = torch.randn(3 * 2 * 2, 3 * 2 * 2, generator=gen) * torch.linspace(0.3, 0.01, 12)
    train = (torch.randn(400, 12, generator=gen) @ mixing.T).view(-1, 3, 2, 2)
    pca = qm.principal_components(train)
    k = 3
    variance, basis = pca["variance"], pca["basis"]
    rest = variance[k:].sum() / (12 - k)
    # Tipping and Bishop's model: covariance W W^T + rest * I with W along the top directions.
    cov = basis[:k].T @ torch.diag(variance[:k] - rest) @ basis[:k] + rest * torch.eye(12)
    gauss = torch.distributions.MultivariateNormal(pca["mean"][0], covariance_matrix=cov)
    probe = (torch.randn(50, 12, generator=gen) @ mixing.T * 1.5).view(-1, 3, 2, 2)
    nll = qm.ppca_nll(pca, probe, k)
    want = -gauss.log_prob(probe.flatten(1).double())
    # The same up to one constant shared by every image.
    torch.testing.assert_close(nll - nll[0], want - want[0], rtol=1e-6, atol=1e-6)
    # Images moved along a direction the training images barely vary in are less likely.
    off = train[:50] + 2.0 * basis[-1].float().view(3, 2, 2)
    assert qm.auroc(qm.ppca_nll(pca, train[:50], k), qm.ppca_nll(pca, off, k)) > 0.9


def test_diversity_ratio_and_precision_recall():
    gen = torch.Generator().manual_seed(3)
    real = torch.rand(64, 3, 8, 8, generator=gen) * 2 - 1
    assert metrics.diversity(real.clone(), real)["value"] == pytest.approx(1.0)
    assert qm.precision_recall(real, real.clone()) == (1.0, 1.0)
    copies = real[:1].expand(64, -1, -1, -1) + 0.01 * torch.randn(64, 3, 8, 8, generator=gen)
    assert metrics.diversity(copies, real)["value"] < 0.1
    assert qm.precision_recall(real, copies)[1] < 0.2


def _tiny_networks(latent=8):
    from progressive.model.networks import Energy, Generator, Inference

    torch.manual_seed(0)
    widths = {"fmap_base": 64, "fmap_max": 16}
    return Generator(16, latent, **widths), Energy(16, **widths), Inference(16, latent, **widths)


def test_energy_offset_shift_ignores_a_closing_gap_but_not_a_constant():
    before = {"heldout": {"mean": -60.0, "std": 90.0}, "samples": {"mean": 60.0}}
    closed = {"heldout": {"mean": -20.0, "std": 30.0}, "samples": {"mean": 20.0}}
    assert qm.scale_shift(closed["heldout"], before["heldout"]) == pytest.approx(40 / 30)
    assert qm.offset_shift(closed, before) == 0.0
    assert (qm.energy_gap(before), qm.energy_gap(closed)) == (120.0, 40.0)
    moved = {"heldout": {"mean": -15.0, "std": 30.0}, "samples": {"mean": 25.0}}  # +5 everywhere
    assert qm.offset_shift(moved, closed) == pytest.approx(5 / 30)
    assert qm.scale_shift(moved["heldout"], closed["heldout"]) == pytest.approx(5 / 30)


def test_energy_scale_shift_is_in_standard_deviations_now():
    assert qm.scale_shift({"mean": 12.0, "std": 4.0}, {"mean": 4.0, "std": 1.0}) == 2.0
    assert qm.scale_shift({"mean": -3.0, "std": 2.0}, {"mean": 1.0, "std": 9.0}) == 2.0
    assert qm.scale_shift({"mean": 5.0, "std": 1.0}, {"mean": 5.0, "std": 3.0}) == 0.0


def test_full_covariance_fit_sees_codes_crowded_into_few_directions():
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(5000, 8, generator=gen)
    logvar = torch.full_like(z, -20.0)
    assert qm.code_spread(z, logvar)["codes_full_kl"] < 0.05
    # Unit spread per dimension, but all eight dimensions driven by two factors.
    mix = torch.randn(2, 8, generator=gen)
    crowded = torch.randn(5000, 2, generator=gen) @ mix
    crowded = crowded / crowded.std(0) + 0.1 * torch.randn(5000, 8, generator=gen)
    spread = qm.code_spread(crowded, logvar)
    assert spread["codes_marginal_kl"] < 0.1 and spread["codes_full_kl"] > 5
    draws = qm.sample_code_fit(crowded, logvar, 4000, seed=0)
    assert torch.allclose(torch.cov(draws.T), torch.cov(crowded.T), atol=0.15)
    assert torch.equal(draws, qm.sample_code_fit(crowded, logvar, 4000, seed=0))
    few = qm.code_spread(crowded[:3], torch.full((3, 8), -80.0))  # fewer codes than dimensions
    assert math.isfinite(few["codes_full_kl"])
    assert torch.isfinite(qm.sample_code_fit(crowded[:3], torch.full((3, 8), -80.0), 5)).all()


def test_synth_cycle_and_energy_auroc_on_tiny_networks():
    g, e, i = _tiny_networks()
    cycle = qm.synth_cycle(g, i, 20, 8, 16, 1.0, seed=0)
    assert cycle["mse"].shape == (20,) and (cycle["mse"] >= 0).all()
    assert math.isfinite(cycle["r2"]) and cycle["r2_per_dim"].shape == (8,)
    held = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    other = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8)
    samples = g(torch.randn(10, 8), 16).detach()
    out = qm.energy_auroc(e, g, i, held, {"other": other}, samples, 16, 1.0)
    s = out["sets"]["other"]
    assert s["n"] == 12 and 0 <= s["auroc_energy"] <= 1 and 0 <= s["auroc_kl"] <= 1
    expected = qm.auroc(energies(e, held, 1.0), energies(e, other, 1.0))
    assert s["auroc_energy"] == pytest.approx(expected)
    assert out["heldout"]["energy"]["std"] > 0


def test_evaluate_every_quality_metric_in_one_call(run_dir, model, tmp_path):  # noqa: F811
    data = model.config.data.path
    folder = tmp_path / "ood"
    folder.mkdir()
    from PIL import Image

    for k in range(6):
        Image.new("RGB", (20, 20), (40 * k, 200, 10)).save(folder / f"{k}.png")
    r = invoke(
        "evaluate", "--ckpt", run_dir, "--data", data, "--n", 12, "--ood", folder,
        "--ood", data, "--metrics", "recon,recon-synth,latent-recovery,energy-auroc,diversity",
    )
    assert r.exit_code == 0, r.output
    read = lambda name: json.loads(  # noqa: E731
        (run_dir / f"metric-{name}.jsonl").read_text().splitlines()[-1]
    )
    recon = read("recon")
    assert recon["pca_components"] == 8 and recon["pca_baseline"] > 0
    assert recon["codes_mean_norm"] >= 0 and recon["codes_marginal_kl"] >= 0
    assert recon["codes_full_kl"] >= recon["codes_marginal_kl"] - 1e-6  # the diagonal's at least
    assert read("recon-synth")["value"] > 0
    assert math.isfinite(read("latent-recovery")["value"])
    assert math.isfinite(read("latent-recovery")["r2_code_fit"])
    auroc = read("energy-auroc")
    assert len(auroc["sets"]) == 2 and list(auroc["sets"])[0] == "ood"
    assert auroc["sets"]["ood"]["n"] == 6
    assert auroc["ppca"]["components"] == 8 and auroc["ppca"]["training_images"] > 0
    assert all(0 <= s["auroc_ppca"] <= 1 for s in auroc["sets"].values())
    assert "/ PPCA " in r.output
    prev = auroc["previous_snapshot"]
    assert prev is not None  # the fixture's run has a snapshot between init and its last
    now = {"heldout": auroc["heldout"]["energy"], "samples": auroc["samples"]["energy"]}
    assert prev["shift_in_std"] == qm.scale_shift(now["heldout"], prev["heldout_energy"])
    before = {"heldout": prev["heldout_energy"], "samples": prev["samples_energy"]}
    assert prev["offset_shift_in_std"] == qm.offset_shift(now, before)
    assert prev["gap"] == qm.energy_gap(before) and auroc["gap"] == qm.energy_gap(now)
    assert "midpoint to the samples moved" in r.output
    assert read("diversity")["value"] > 0
    assert "AUROC by energy" in r.output
    line = next(x for x in r.output.splitlines() if x.startswith("appended to "))
    for name in ("recon", "recon-synth", "latent-recovery", "energy-auroc", "diversity"):
        assert f"metric-{name}.jsonl" in line


def test_energy_auroc_without_ood_is_one_line_error(run_dir, model):  # noqa: F811
    r = invoke("evaluate", "--ckpt", run_dir, "--data", model.config.data.path,
               "--metrics", "energy-auroc", "--n", 4)
    assert r.exit_code != 0 and "--ood" in r.output and "Traceback" not in r.output


def test_kl_sum_is_latent_times_mean():
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    assert loss.kl_to_prior(mu, logvar, "sum") == pytest.approx(
        7 * loss.kl_to_prior(mu, logvar, "mean").item(), rel=1e-5
    )


def test_reference_networks_shapes_and_one_training_step():
    g, e, i = ReferenceGenerator(32, 10, base=8), ReferenceEnergy(32, 8), ReferenceInference(
        32, 10, 8
    )
    x = g(torch.randn(4, 10), 32)
    assert x.shape == (4, 3, 32, 32) and x.abs().max() <= 1
    assert e(x).shape == (4,) and [t.shape for t in i(x)] == [(4, 10), (4, 10)]
    with pytest.raises(ValueError):
        g(torch.randn(2, 10), 16)
    cfg = config("demo", architecture="reference", max_res=32, start_res=32, batch=4,
                      latent=10, mixed_precision="no")
    trainer = Trainer.create(cfg)
    before = [b.clone() for b in trainer.generator_ema.buffers()]
    average = trainer.averages["inference_ema"]  # the inference model's, kept by default
    start = [p.clone() for p in average.parameters()]
    real = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    stats = trainer.step(real, Schedule.from_config(cfg).at(0), 0)
    assert all(math.isfinite(v.item()) for v in stats.values())
    after = list(trainer.generator_ema.buffers())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    moved = [(a, b, c) for a, b, c in zip(
        start, average.parameters(), trainer.inference.parameters(), strict=True
    ) if not torch.equal(a, c)]
    assert moved and all(not torch.equal(a, b) and not torch.equal(b, c) for a, b, c in moved)


def test_reference_networks_refuse_growing():
    from progressive.core.errors import UserError

    with pytest.raises(UserError, match="schedule.start_res"):
        config("demo", architecture="reference", **TINY_NETWORKS)


def test_energy_drift_on_generated_images():
    e_real, e_fake = torch.tensor([1.0, 3.0]), torch.tensor([4.0, -2.0])
    w = LossConfig(energy_drift=0.0, energy_drift_fake=0.5)
    loss_value, _ = loss.energy_loss(e_real, e_fake, w)
    assert loss_value.item() == pytest.approx(2.0 - 1.0 + 0.5 * 10.0)


def test_paper_presets_cost_about_the_reference_networks():
    from progressive.model.layers import num_parameters

    for preset in ("cifar10", "celeba64", "imagenet32"):
        cfg = config(preset)
        params = num_parameters(networks_of(cfg)["generator"])
        assert 1e6 < params < 4e6, (preset, params)  # a few million, like DCGAN-sized networks


def test_configuration_saved_before_new_keys_loads_as_trained():
    from progressive.config.migrate import migrate

    cfg = json.loads((Path(__file__).parent / "fixtures" / "run-0.1" / "config.json").read_text())
    for key in ("architecture", "fmap_min"):
        del cfg[key]
    for key in ("kl_reduction", "energy_drift_fake", "marginal_kl", "code_decorrelation",
                "energy_outliers"):
        del cfg["loss"][key]
    old = migrate(cfg)
    assert old.networks.architecture == "progressive" and old.loss.kl_reduction == "mean"
    assert old.networks.fmap_min == 1
    assert old.loss.marginal_kl == 0.0 and config("demo").loss.marginal_kl > 0
    assert old.loss.code_decorrelation == 0.0
    assert old.loss.energy_outliers == 0.0
    assert config("demo").loss.energy_outliers > 0
    # held to zero from both sides now, but a run from before keeps its real-side-only penalty
    assert config("demo").loss.energy_drift_fake == 1e-3
    assert old.loss.energy_drift_fake == 0.0


def test_code_spread_sees_codes_that_left_the_prior_together():
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(5000, 8, generator=gen)
    logvar = torch.full_like(z, -20.0)  # sharp posteriors: the spread is mu's alone
    on_prior = qm.code_spread(z, logvar)
    assert on_prior["codes_mean_norm"] < 0.1
    assert abs(on_prior["codes_std_median"] - 1) < 0.05 and on_prior["codes_marginal_kl"] < 0.05
    shift = torch.tensor([3.0, 4.0, 0, 0, 0, 0, 0, 0])
    moved = qm.code_spread(z * 0.5 + shift, logvar)
    assert abs(moved["codes_mean_norm"] - 5.0) < 0.1
    assert abs(moved["codes_std_median"] - 0.5) < 0.05
    assert moved["codes_marginal_kl"] > 12.5  # at least the mean's 0.5 * 5^2


def test_fitted_codes_reconstruct_at_least_as_well_as_the_inference_models():
    g, _, i = _tiny_networks()
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    mu, _ = qm.posterior(i, images, 1.0)
    x = images.float() / 127.5 - 1
    start = qm.per_image_mse(qm.decode(g, mu, 16, 1.0), x)
    z, fitted = qm.fitted_codes(g, x, mu, 16, 1.0, steps=50)
    assert z.shape == mu.shape and not torch.equal(z, mu)
    assert fitted.mean() < start.mean()
    assert all(p.grad is None for p in g.parameters())  # the generator stays as it was


def test_evaluate_recon_fit_records_the_gap(run_dir, model):  # noqa: F811
    r = invoke("evaluate", "--ckpt", run_dir, "--data", model.config.data.path,
               "--metrics", "recon-fit", "--n", 6)
    assert r.exit_code == 0, r.output
    rec = json.loads((run_dir / "metric-recon-fit.jsonl").read_text().splitlines()[-1])
    assert rec["images"] == 6 and rec["value"] <= rec["inferred"]
    assert rec["codes_moved"] > 0 and "codes fitted per image" in r.output
    assert 0 < rec["pca_baseline"] < 1 and "PCA" in r.output


def test_energy_auroc_against_the_built_in_noise_sets(run_dir, model):  # noqa: F811
    data = model.config.data.path
    r = invoke("evaluate", "--ckpt", run_dir, "--data", data, "--n", 8, "--metrics",
               "energy-auroc", "--ood", "noise:flat", "--ood", "noise:pixel")
    assert r.exit_code == 0, r.output
    rec = json.loads((run_dir / "metric-energy-auroc.jsonl").read_text().splitlines()[-1])
    assert list(rec["sets"]) == ["noise:flat", "noise:pixel"]
    assert all(s["n"] == 8 and 0 <= s["auroc_energy"] <= 1 for s in rec["sets"].values())
    assert rec["sets"]["noise:flat"]["energy"] != rec["sets"]["noise:pixel"]["energy"]
    r = invoke("evaluate", "--ckpt", run_dir, "--data", data, "--n", 8, "--metrics",
               "energy-auroc", "--ood", "noise:stripes")
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "--ood noise:stripes" in r.output and "noise:smooth" in r.output
