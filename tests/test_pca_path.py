"""The principal-component path: its fit, the networks it starts, and training on it."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file
from tiny import TINY_NETWORKS, config, networks_of, write_synthetic

from progressive.cli.main import main
from progressive.config.keys import replace
from progressive.config.migrate import migrate
from progressive.core.errors import UserError
from progressive.core.images import to_float
from progressive.model.layers import soft_clamp
from progressive.model.networks import LOGVAR_MAX, LOGVAR_MIN
from progressive.train import pca_path
from progressive.train.loop import resolve_run, train


def structured_images(n: int, res: int, seed: int = 0) -> torch.Tensor:
    """uint8 images (n, 3, res, res) with a few strong directions of variation and noise."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(5, 3 * res * res, generator=g)
    codes = torch.randn(n, 5, generator=g) * torch.tensor([40.0, 30.0, 20.0, 10.0, 5.0])
    x = 128 + codes @ directions + 3 * torch.randn(n, 3 * res * res, generator=g)
    return x.clamp(0, 255).round().to(torch.uint8).view(n, 3, res, res)


@pytest.mark.parametrize("n", [20, 100])  # fewer images than pixels (Gram) and more (covariance)
def test_fit_is_the_principal_components(n):
    images = structured_images(n, 4)
    fitted = pca_path.fit(images, 6)
    x = to_float(images).flatten(1).double()
    centred = x - x.mean(0)
    _, sv, vh = torch.linalg.svd(centred, full_matrices=False)
    variance = sv.square() / (n - 1)
    torch.testing.assert_close(fitted["mean"].double(), x.mean(0), atol=1e-6, rtol=0)
    basis = fitted["basis"].double()
    torch.testing.assert_close(basis @ basis.T, torch.eye(6, dtype=torch.float64), atol=1e-5,
                               rtol=0)
    # The same subspace: equal projections.
    torch.testing.assert_close(basis.T @ basis, vh[:6].T @ vh[:6], atol=1e-4, rtol=0)
    torch.testing.assert_close(fitted["scale"].double().square(), variance[:6], rtol=1e-4,
                               atol=0)
    noise = variance[6:].sum() / (48 - 6)  # 48 pixel values; variances past rank n-1 are 0
    torch.testing.assert_close(fitted["logvar"].double(), (noise / variance[:6]).log(),
                               rtol=0, atol=1e-4)


def test_fit_needs_more_images_than_components():
    with pytest.raises(ValueError, match="need at least 7 images"):
        pca_path.fit(structured_images(5, 4), 6)
    with pytest.raises(ValueError, match="of 48 pixel values"):
        pca_path.fit(structured_images(60, 4), 50)


def test_spread_indices_cover_the_whole_dataset():
    assert pca_path.spread_indices(10, 20) == list(range(10))
    picked = pca_path.spread_indices(1000, 5)
    assert picked == [0, 250, 500, 749, 999]


def tiny_networks(pca: bool):
    torch.manual_seed(0)
    return networks_of(config("demo", max_res=8, pca_path=pca, **TINY_NETWORKS))


def test_path_draws_nothing_and_adds_nothing_until_installed():
    plain, with_path = tiny_networks(False), tiny_networks(True)
    z, x = torch.randn(4, 8), torch.rand(4, 3, 8, 8) * 2 - 1
    for name in ("generator", "inference"):
        assert with_path[name].pca is not None and plain[name].pca is None
    torch.testing.assert_close(with_path["generator"](z, 8), plain["generator"](z, 8))
    for a, b in zip(with_path["inference"](x), plain["inference"](x), strict=True):
        torch.testing.assert_close(a, b)


def test_installed_networks_start_as_the_linear_model():
    nets = tiny_networks(True)
    images = structured_images(40, 8)
    fitted = pca_path.fit(images, 8)
    pca_path.install(nets, fitted)
    x = to_float(images[:6])
    mu, logvar = nets["inference"](x)
    # Decoding the code gives the projection on the components, mean included.
    flat = x.flatten(1)
    projection = (flat - fitted["mean"]) @ fitted["basis"].T @ fitted["basis"] + fitted["mean"]
    with torch.no_grad():
        torch.testing.assert_close(nets["generator"](mu, 8).flatten(1), projection, atol=1e-4,
                                   rtol=0)
        torch.testing.assert_close(nets["generator_ema"](mu, 8), nets["generator"](mu, 8))
        torch.testing.assert_close(logvar[0], soft_clamp(fitted["logvar"], LOGVAR_MIN,
                                                         LOGVAR_MAX))
        # Codes of the training images are whitened: about unit spread along each component.
        codes = nets["inference"](to_float(images))[0]
        assert codes.std(0).min() > 0.9 and codes.std(0).max() < 1.1
        # A lower stage sees the linear image average-pooled, and encodes its own images.
        z = torch.randn(3, 8)
        torch.testing.assert_close(nets["generator"](z, 4), F.avg_pool2d(nets["generator"](z, 8),
                                                                         2), atol=1e-5, rtol=0)
        assert nets["inference"](F.avg_pool2d(x, 2))[0].shape == (6, 8)
    # The zeroed outputs still learn: their gradient is not zero.
    nets["generator"](torch.randn(3, 8), 8).square().sum().backward()
    assert nets["generator"].to_rgb["8"].weight.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("data") / "synthetic", 40, 8)


def tiny(dataset, **kw):
    return config("demo", **(dict(
        **TINY_NETWORKS, max_res=8, batch=4, fade_kimg=0.016, stable_kimg=0.016, workers=0,
        snapshot_kimg=1.0, tick_kimg=0.016, holdout=0.25, pca_path=True, data=str(dataset),
    ) | kw))


def test_training_starts_from_the_fit_saves_it_and_resumes_exactly(dataset, tmp_path):
    cfg = tiny(dataset)
    full = train(cfg, tmp_path / "full", progress=False)
    start = tmp_path / "full" / "snapshot-000000000"
    fitted = pca_path.fit(pca_path_images(dataset, 30), 8)  # 40 images, the last 10 held out
    for name in ("generator", "generator_ema", "inference", "inference_ema"):
        saved = load_file(start / f"{name}.safetensors")
        torch.testing.assert_close(saved["pca.basis"], fitted["basis"])
        torch.testing.assert_close(saved["pca.logvar"], fitted["logvar"])
        assert load_file(full / f"{name}.safetensors")["pca.basis"].equal(saved["pca.basis"])
    # The evaluation's starting networks are the run's.
    saved = json.loads((tmp_path / "full" / "config.json").read_text())
    started = pca_path.starting_networks(migrate(saved))
    for key, value in load_file(start / "generator.safetensors").items():
        torch.testing.assert_close(started["generator"].state_dict()[key], value)
    # `evaluate` finds the start in the run's first snapshot, even with the data gone.
    import dataclasses

    from progressive.run.loading import load_run
    from progressive.use.evaluate import _initial_generator

    run = load_run(tmp_path / "full")
    moved = replace(run.config, {"data.path": str(tmp_path / "moved")})
    run = dataclasses.replace(run, config=moved)
    initial = _initial_generator(run).state_dict()
    for key, value in load_file(start / "generator.safetensors").items():
        assert initial[key].equal(value)
    # Interrupted and resumed: the same weights.
    train(tiny(dataset, total_kimg=0.012), tmp_path / "parts", progress=False)
    more = {"schedule.total_kimg": 0.048}
    cfg, run_dir, snapshot = resolve_run(tiny(dataset), more, tmp_path, "parts", "auto")
    resumed = train(cfg, run_dir, snapshot, progress=False)
    assert resumed.name == full.name
    for name in ("generator", "inference"):
        a, b = load_file(full / f"{name}.safetensors"), load_file(resumed / f"{name}.safetensors")
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


def pca_path_images(dataset, n):
    from progressive.data.reader import ImageDataset

    return ImageDataset(dataset, 8).batch(list(range(n)))


def test_bad_pca_path_settings_are_clear_errors(dataset, tmp_path):
    with pytest.raises(UserError, match="not the reference ones"):
        config("demo", pca_path=True, architecture="reference", start_res=32)
    with pytest.raises(UserError, match="must be true or false"):
        config("demo", pca_path="yes")
    with pytest.raises(UserError, match="needs more than 40 training images"):
        pca_path.training_fit(tiny(dataset, latent=40))
    # From the command line, before anything is written.
    result = CliRunner().invoke(main, ["train", "--data", str(dataset), "--max-res", "8",
                                       "--set", "networks.pca_path=true", "--latent", "40",
                                       "--outdir",
                                       str(tmp_path / "runs")])
    assert result.exit_code == 1 and "needs more than 40 training images" in result.output
    assert not (tmp_path / "runs").exists()
    with pytest.raises(UserError, match="at max_res 8 they have 192: lower the latent"):
        tiny(dataset, latent=200)
    from datasets_prep import make_source, write_dataset

    folder = tmp_path / "faces"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    occluded = tmp_path / "occluded"
    write_dataset(make_source("folder", str(folder)), occluded, 8, workers=0, progress=False,
                  occlude="block20", mask_seed=1)
    with pytest.raises(UserError, match="needs complete images"):
        pca_path.training_fit(tiny(occluded, latent=2, holdout=0.0))


def test_pca_path_option_reaches_the_configuration(tmp_path):
    args = ["train", "--max-res", "16", "--dry-run", "--calibration-seconds", "0",
            "--outdir", str(tmp_path)]
    result = CliRunner().invoke(main, args + ["--set", "networks.pca_path=true"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["config"]["networks"]["pca_path"] is True
    result = CliRunner().invoke(main, args)
    assert json.loads(result.output)["config"]["networks"]["pca_path"] is False


def test_stage_evaluation_measures_swd_at_initialization_from_the_starting_networks(tmp_path):
    from progressive.metrics import fidelity as metrics
    from progressive.metrics.stage import StageEvaluator

    data = write_synthetic(tmp_path / "synthetic16", 40, 16)
    cfg = tiny(data, max_res=16)
    evaluator = StageEvaluator(cfg, tmp_path / "run", torch.device("cpu"),
                               pca_path.starting_networks)
    real = evaluator._reals(16, evaluator.indices)
    measured = evaluator._swd_at_init(16, real, 1.0)["mean"]
    pca_samples = evaluator._sample(pca_path.starting_networks(cfg)["generator_ema"], 16, 1.0)
    assert measured == metrics.sliced_wasserstein(real, pca_samples, seed=0)["mean"]
    # Without the starting networks the evaluator would measure the random networks instead.
    plain = StageEvaluator(cfg, tmp_path / "run", torch.device("cpu"))
    assert plain._swd_at_init(16, real, 1.0)["mean"] != measured
