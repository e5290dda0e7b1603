"""Langevin refinement on the energy, evaluation of refined samples, energy along walks."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from tiny import train_tiny_run

from progressive.cli.main import main
from progressive.core.errors import UserError
from progressive.metrics import fidelity as metrics
from progressive.model import latents, sampling
from progressive.model.langevin import Langevin, langevin, latent_potential, refine
from progressive.run.loading import load_run
from progressive.use import generate as use

RES = 16
# A short noiseless chain in image space, for the command tests.
CHAIN = ["--langevin-steps", 2, "--langevin-step-size", 1e-3, "--langevin-noise", 0,
         "--langevin-space", "image"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny run trained to 16x16 (stages 4 and 8 done, 16 faded in to alpha 0.5)."""
    return train_tiny_run(tmp_path_factory.mktemp("runs"), RES)


@pytest.fixture(scope="module")
def model(run_dir):
    return load_run(run_dir, "cpu")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def quadratic(centre: torch.Tensor, curvature: float):
    """U(x) = k |x - c|^2 / 2 per sample."""
    return lambda x: 0.5 * curvature * (x - centre).pow(2).flatten(1).sum(dim=1)


# --------------------------------------------------------------------------- the chain


def test_zero_steps_return_the_samples_unchanged(model):
    x = torch.randn(5, 3, 4, 4)
    assert langevin(quadratic(torch.zeros(1), 1.0), x, 0, 0.1, 1.0) is x
    z = torch.randn(70, model.latent, generator=torch.Generator().manual_seed(3))
    raw = sampling.generate(model.generator, z, RES, model.alpha)
    for space in ("image", "latent"):
        chain = Langevin(steps=0, step_size=0.5, noise=1.0, space=space)
        got = refine(model.generator, model.energy, z, RES, model.alpha, chain, seed=1)
        assert torch.equal(got, raw), space
    args = (model.generator, 6, 4, model.latent, RES, model.alpha)
    assert torch.equal(
        sampling.sample(*args, energy=model.energy, chain=Langevin(steps=0)), sampling.sample(*args)
    )


def test_one_step_lowers_a_quadratic_energy_by_the_exact_factor():
    centre = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    u = quadratic(centre, 2.0)
    x0 = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 3
    trace: list[torch.Tensor] = []
    x1 = langevin(u, x0, 1, 0.1, 0.0, trace=trace)
    # Descent on k |x - c|^2 / 2: x - c shrinks by (1 - s k), U by its square.
    assert torch.allclose(u(x1), (1 - 0.1 * 2.0) ** 2 * u(x0), rtol=1e-5)
    assert len(trace) == 2 and torch.allclose(trace[0], u(x0)) and torch.allclose(trace[1], u(x1))
    # With noise at temperature 1, one small step still lowers a high energy on average.
    noisy = langevin(u, x0, 1, 0.05, 1.0, generator=torch.Generator().manual_seed(2))
    assert torch.all(u(noisy) < u(x0))


def test_long_chain_samples_the_gaussian_at_temperature_t():
    # U = x^2 / (2 sigma^2): the chain's stationary variance is T sigma^2 / (1 - s / (2 sigma^2))
    # (exact for the discretised chain), which checks the noise scale sqrt(2 s T).
    sigma2, s = 4.0, 0.2
    u = lambda x: x.pow(2).sum(dim=1) / (2 * sigma2)  # noqa: E731
    for temperature in (1.0, 0.25):
        x = langevin(
            u,
            torch.zeros(20000, 1),
            100,
            s,
            temperature,
            generator=torch.Generator().manual_seed(0),
        )
        expected = temperature * sigma2 / (1 - s / (2 * sigma2))
        assert x.var().item() == pytest.approx(expected, rel=0.05)


def test_chains_on_the_model_lower_the_energy_and_are_seeded(model):
    z = torch.randn(6, model.latent, generator=torch.Generator().manual_seed(0))
    g, e, a = model.generator, model.energy, model.alpha
    raw = sampling.generate(g, z, RES, a)
    descent = Langevin(steps=1, step_size=1e-3, noise=0.0, space="image")
    x1 = refine(g, e, z, RES, a, descent)
    assert x1.abs().max() <= 1.0
    assert torch.all(sampling.sample_energies(e, x1, a) < sampling.sample_energies(e, raw, a))
    u = latent_potential(g, e, RES, a)
    with torch.no_grad():
        u0 = u(z)
    trace: list[torch.Tensor] = []
    z1 = langevin(u, z, 1, 1e-3, 0.0, trace=trace)
    with torch.no_grad():
        assert torch.all(u(z1) < u0)
    latent = Langevin(steps=3, step_size=1e-2, noise=1.0, space="latent")
    one = refine(g, e, z, RES, a, latent, seed=5)
    assert torch.equal(one, refine(g, e, z, RES, a, latent, seed=5))
    assert not torch.equal(one, refine(g, e, z, RES, a, latent, seed=6))
    assert not torch.equal(one, raw)


def test_settings_are_checked():
    for bad, word in [
        (dict(steps=-1), "--langevin-steps"),
        (dict(step_size=0.0), "--langevin-step-size"),
        (dict(step_size=math.nan), "--langevin-step-size"),
        (dict(noise=-0.5), "--langevin-noise"),
        (dict(space="pixel"), "--langevin-space"),
    ]:
        with pytest.raises(UserError, match=word):
            Langevin(**bad)


# --------------------------------------------------------------------------- commands


def test_sample_with_langevin(run_dir, model, tmp_path):
    plain, zero, refined = (tmp_path / f"{n}.png" for n in ("plain", "zero", "refined"))
    base = ["sample", "--ckpt", run_dir, "--n", 4, "--seed", 2]
    assert invoke(*base, "--out", plain).exit_code == 0
    r = invoke(*base, "--out", zero, "--langevin-steps", 0, "--langevin-step-size", 7)
    assert r.exit_code == 0, r.output
    assert zero.read_bytes() == plain.read_bytes()
    r = invoke(*base, "--out", refined, *CHAIN)
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if "Langevin" in x)
    before, after = (float(v) for v in line.split("mean energy ")[1].split(" -> "))
    assert after < before
    assert refined.read_bytes() != plain.read_bytes()


def _usage_error(result, option):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and option in lines[0], result.output


def test_bad_langevin_options(run_dir, tmp_path):
    out = tmp_path / "o.png"
    base = ["sample", "--ckpt", run_dir, "--out", out]
    _usage_error(invoke(*base, "--langevin-steps", -1), "--langevin-steps")
    size = "--langevin-step-size"
    _usage_error(invoke(*base, "--langevin-steps", 2, size, 0), size)
    _usage_error(invoke(*base, "--langevin-steps", 2, "--langevin-noise", -1), "--langevin-noise")
    space = "--langevin-space"
    _usage_error(invoke(*base, "--langevin-steps", 2, space, "pixel"), space)
    data = tmp_path / "none"
    _usage_error(
        invoke("evaluate", "--ckpt", run_dir, "--data", data, size, -2), size
    )
    r = invoke("interpolate", "--ckpt", run_dir, "--smooth-video", 1, "--energy", "--out", out)
    assert r.exit_code == 1 and r.output.strip().startswith("Error:") and "--energy" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not out.exists()


def test_evaluate_raw_and_refined(run_dir, model, tmp_path):
    data = model.config.data.path
    base = ["evaluate", "--ckpt", run_dir, "--data", data, "--n", 12]
    r = invoke(*base, "--metrics", "swd,diversity,energy", *CHAIN)
    assert r.exit_code == 0, r.output
    records = {
        name: json.loads((run_dir / f"metric-{name}.jsonl").read_text().splitlines()[-1])
        for name in ("swd", "diversity", "energy")
    }
    for rec in records.values():
        assert rec["langevin"] == {"steps": 2, "step_size": 1e-3, "noise": 0.0, "space": "image"}
        assert np.isfinite(rec["refined"])
    energy = records["energy"]
    assert energy["refined"] < energy["value"]  # descent on the energy lowers it
    real = use.load_images(data, RES, RES, 12)[1]
    assert energy["real"] == pytest.approx(sampling.energies(model.energy, real, 0.5).mean().item())
    fake = sampling.sample(model.generator, 12, 0, model.latent, RES, 0.5)
    assert energy["value"] == pytest.approx(
        sampling.sample_energies(model.energy, fake, 0.5).mean().item()
    )
    assert records["swd"]["refined"] != records["swd"]["value"]
    # Without a chain the records hold the raw measures only.
    r = invoke(*base, "--metrics", "diversity")
    assert r.exit_code == 0, r.output
    rec = json.loads((run_dir / "metric-diversity.jsonl").read_text().splitlines()[-1])
    assert "refined" not in rec and rec["value"] == records["diversity"]["value"]


def test_diversity_of_copies_and_of_the_data_itself():
    rng = torch.Generator().manual_seed(0)
    real = torch.rand(20, 3, 64, 64, generator=rng) * 2 - 1
    assert metrics.diversity(real, real)["value"] == pytest.approx(1.0)
    copies = real[:2].repeat(10, 1, 1, 1)
    assert metrics.diversity(copies, real)["value"] == 0.0
    d = metrics.nearest_neighbour_distances(real)
    assert d.shape == (20,) and torch.all(d > 0)


# --------------------------------------------------------------------------- energy along walks


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_interpolate_energy_csv_and_curve(run_dir, model, tmp_path):
    plain, out = tmp_path / "plain.png", tmp_path / "walk.png"
    args = ["interpolate", "--ckpt", run_dir, "--seeds", "3,7,9", "--steps", 5]
    assert invoke(*args, "--out", plain).exit_code == 0
    r = invoke(*args, "--out", out, "--energy")
    assert r.exit_code == 0, r.output
    rows = read_csv(tmp_path / "walk-energy.csv")
    assert len(rows) == 2 * 5  # one row per frame of the grid
    assert [(r["walk"], r["step"]) for r in rows[:6]] == [
        ("0", "0"),
        ("0", "1"),
        ("0", "2"),
        ("0", "3"),
        ("0", "4"),
        ("1", "0"),
    ]
    assert (rows[0]["start"], rows[0]["end"], rows[5]["start"], rows[5]["end"]) == (
        "3",
        "7",
        "7",
        "9",
    )
    z = latents.walk_latents(latents.seed_latents([3, 7, 9], model.latent), 5).flatten(0, 1)
    images = sampling.generate(model.generator, z, RES, model.alpha)
    expected = sampling.sample_energies(model.energy, images, model.alpha)
    got = torch.tensor([float(r["energy"]) for r in rows])
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
    # The picture is the plain grid with the curve panel underneath.
    grid, picture = np.asarray(Image.open(plain)), np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape[1] == grid.shape[1] and picture.shape[0] > grid.shape[0] + 20
    assert np.array_equal(picture[: grid.shape[0]], grid)
    panel = picture[grid.shape[0] :]
    assert (panel != 255).any(axis=2).sum() > 50  # something is drawn


def test_interpolate_energy_of_an_animation_and_of_a_real_image_walk(run_dir, tmp_path):
    out = tmp_path / "walk.gif"
    args = ["interpolate", "--ckpt", run_dir, "--steps", 4, "--energy", "--out"]
    r = invoke(*args, out, "--seeds", "1,2,3")
    assert r.exit_code == 0, r.output
    rows = read_csv(tmp_path / "walk-energy.csv")
    assert [int(r["frame"]) for r in rows] == list(range(7))  # 2 * (4 - 1) + 1 frames
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for path, seed in ((a, 0), (b, 1)):
        rng = np.random.default_rng(seed)
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
    r = invoke(*args, tmp_path / "ab.png", "--from", a, "--to", b)
    assert r.exit_code == 0, r.output
    rows = read_csv(tmp_path / "ab-energy.csv")
    assert len(rows) == 4 and rows[0]["start"] == "a.png" and rows[0]["end"] == "b.png"
