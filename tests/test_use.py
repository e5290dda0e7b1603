"""interpolate, sample, reconstruct, energy, evaluate and `info CKPT` on a tiny trained run."""

from __future__ import annotations

import csv
import inspect
import json
import shutil

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file
from tiny import networks_of, train_tiny_run

from progressive.cli.main import main
from progressive.core.grids import GRID_PADDING
from progressive.core.images import load_image_file, to_uint8
from progressive.data.reader import ImageDataset
from progressive.metrics import inception
from progressive.metrics.stage import split_counts
from progressive.model import latents, sampling
from progressive.model.langevin import Langevin, refine, refine_batches
from progressive.model.layers import num_parameters
from progressive.run.loading import load_run
from progressive.use import generate as use

RES = 16
PAD = GRID_PADDING


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A run trained for 56 images: stages 4 and 8 done, 16 half faded in (alpha 0.5)."""
    return train_tiny_run(tmp_path_factory.mktemp("runs"), RES)


@pytest.fixture(scope="session")
def model(run_dir):
    return load_run(run_dir, device="cpu")


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def invoke_evaluate(run_dir, data, metrics, n, *more):
    """`progressive evaluate` of `run_dir` against `data` with --metrics, --n and `more`."""
    return invoke("evaluate", "--ckpt", run_dir, "--data", data, "--metrics", metrics, "--n", n,
                  *more)


def cells(path, res=RES):
    """A saved grid split back into its cells: (rows, cols, res, res, 3) uint8."""
    grid = np.asarray(Image.open(path).convert("RGB"))
    rows = (grid.shape[0] - PAD) // (res + PAD)
    cols = (grid.shape[1] - PAD) // (res + PAD)
    return np.stack(
        [
            np.stack(
                [
                    grid[
                        PAD + r * (res + PAD) : PAD + r * (res + PAD) + res,
                        PAD + c * (res + PAD) : PAD + c * (res + PAD) + res,
                    ]
                    for c in range(cols)
                ]
            )
            for r in range(rows)
        ]
    )


def as_hwc(images):
    return to_uint8(images).permute(0, 2, 3, 1).numpy().astype(int)


def write_photo(path, w, h, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def test_snapshot_stands_mid_fade(run_dir, model):
    assert (model.res, model.alpha) == (RES, 0.5)
    ema = load_file(run_dir / "snapshot-000000056" / "generator_ema.safetensors")
    assert all(torch.equal(v, ema[k]) for k, v in model.generator.state_dict().items())


def test_sample_grid_and_outdir(run_dir, model, tmp_path):
    out = tmp_path / "grid.png"
    r = invoke("sample", "--ckpt", run_dir, "--n", 5, "--nrow", 3, "--seed", 4, "--out", out)
    assert r.exit_code == 0, r.output
    # 3 columns and 2 rows of 16px images with 2px padding around each.
    assert Image.open(out).size == (3 * (RES + PAD) + PAD, 2 * (RES + PAD) + PAD)
    expected = as_hwc(sampling.sample(model.generator, 5, 4, model.latent, RES, 0.5))
    got = cells(out).reshape(-1, RES, RES, 3)[:5]
    assert np.abs(got - expected).max() <= 1
    r = invoke(
        "sample", "--ckpt", run_dir, "--n", 3, "--outdir", tmp_path / "many", "--truncation", 0.0
    )
    assert r.exit_code == 0, r.output
    files = sorted((tmp_path / "many").glob("*.png"))
    assert len(files) == 3 and all(Image.open(f).size == (RES, RES) for f in files)
    # psi = 0 puts every latent at the mean: all samples are the same image.
    assert len({Image.open(f).tobytes() for f in files}) == 1


def test_interpolate_png_rows_start_and_end_at_the_seeds(run_dir, model, tmp_path):
    out = tmp_path / "walk.png"
    r = invoke("interpolate", "--ckpt", run_dir, "--seeds", "3,7,9", "--steps", 5, "--out", out)
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == (5 * (RES + PAD) + PAD, 2 * (RES + PAD) + PAD)
    grid = cells(out)
    ends = as_hwc(
        sampling.generate(model.generator, latents.seed_latents([3, 7, 9], model.latent), RES, 0.5)
    )
    assert np.abs(grid[0, 0] - ends[0]).max() <= 1
    assert np.abs(grid[0, -1] - ends[1]).max() <= 1
    assert np.abs(grid[1, 0] - ends[1]).max() <= 1
    assert np.abs(grid[1, -1] - ends[2]).max() <= 1
    assert np.abs(grid[0, 2] - ends[0]).max() > 1  # the middle is somewhere else


def test_interpolate_gif_has_one_frame_per_step(run_dir, model, tmp_path):
    out = tmp_path / "walk.gif"
    r = invoke(
        "interpolate",
        "--ckpt",
        run_dir,
        "--seeds",
        "1,2",
        "--steps",
        4,
        "--slerp",
        "--out",
        out,
        "--res",
        8,
    )
    assert r.exit_code == 0, r.output
    frames = imageio.mimread(out)
    assert len(frames) == 4 and frames[0].shape[:2] == (8, 8)
    # Two walks share their middle endpoint, shown once: 2 * (4 - 1) + 1 frames.
    r = invoke(
        "interpolate", "--ckpt", run_dir, "--seeds", "1,2,3", "--steps", 4, "--out", out, "--res", 8
    )
    assert r.exit_code == 0, r.output
    frames = imageio.mimread(out)
    assert len(frames) == 7
    z = latents.seed_latents([1, 2, 3], model.latent)
    ends = as_hwc(sampling.generate(model.generator, z, 8, 1.0))
    assert np.abs(frames[3][..., :3].astype(int) - ends[1]).max() <= 1
    assert np.abs(frames[6][..., :3].astype(int) - ends[2]).max() <= 1


def test_slerp_keeps_norms_between_the_endpoints():
    z0 = torch.randn(16, generator=torch.Generator().manual_seed(0)) * 0.5
    z1 = torch.randn(16, generator=torch.Generator().manual_seed(1)) * 2.0
    walk = latents.walk_latents(torch.stack([z0, z1]), 9, spherical=True)[0]
    norms = walk.norm(dim=1)
    assert torch.allclose(walk[0], z0, atol=1e-5) and torch.allclose(walk[-1], z1, atol=1e-5)
    lo, hi = min(z0.norm(), z1.norm()), max(z0.norm(), z1.norm())
    assert torch.all(norms >= lo - 1e-5) and torch.all(norms <= hi + 1e-5)
    # Linear interpolation of two near-orthogonal latents dips below both norms in the middle.
    lin = latents.walk_latents(torch.stack([z0 / z0.norm(), z1 / z1.norm()]), 9)[0]
    assert lin[4].norm() < 0.9


def test_walk_between_two_real_images_starts_and_ends_at_their_reconstructions(
    run_dir, model, tmp_path
):
    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    write_photo(a, 40, 30, seed=0)
    write_photo(b, 64, 64, seed=1)
    out = tmp_path / "ab.png"
    r = invoke("interpolate", "--ckpt", run_dir, "--from", a, "--to", b, "--steps", 4, "--out", out)
    assert r.exit_code == 0, r.output
    real = torch.stack([load_image_file(p, RES, RES) for p in (a, b)])
    recon = as_hwc(sampling.reconstruct(model.generator, model.inference, real, RES, 0.5))
    grid = cells(out)
    assert grid.shape[:2] == (1, 4)
    assert np.abs(grid[0, 0] - recon[0]).max() <= 1
    assert np.abs(grid[0, -1] - recon[1]).max() <= 1


def test_smooth_video(run_dir, tmp_path):
    out = tmp_path / "v.mp4"
    r = invoke("interpolate", "--ckpt", run_dir, "--smooth-video", 1, "--fps", 6, "--out", out)
    assert r.exit_code == 0, r.output
    reader = imageio.get_reader(out)
    assert reader.count_frames() == 6 and reader.get_meta_data()["size"] == (RES, RES)
    z = latents.smooth_latents(200, 32, sigma_frames=5, seed=0)
    assert z.pow(2).mean().item() == pytest.approx(1.0, rel=1e-5)
    # Neighbouring frames are close, distant ones are not.
    assert (z[1] - z[0]).norm() < 0.3 * (z[100] - z[0]).norm()


def test_reconstruct_prints_mse(run_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        write_photo(folder / f"{i}.png", 20 + 10 * i, 24, seed=i)
    out = tmp_path / "rec.png"
    r = invoke("reconstruct", "--ckpt", run_dir, "--data", folder, "--out", out)
    assert r.exit_code == 0, r.output
    # Three pairs in one row: 6 cells.
    assert Image.open(out).size == (6 * (RES + PAD) + PAD, RES + 2 * PAD)
    assert "MSE per image" in r.output and "median" in r.output


def test_energy_csv_matches_the_energy_model(run_dir, model, tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    sizes = [(50, 40), (16, 16), (33, 70)]
    names = ["x.png", "sub/y.png", "z.jpg"]
    for i, (name, (w, h)) in enumerate(zip(names, sizes, strict=True)):
        write_photo(folder / name, w, h, seed=10 + i)
    out = tmp_path / "scores.csv"
    r = invoke("energy", "--ckpt", run_dir, "--data", folder, "--out", out)
    assert r.exit_code == 0, r.output
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["image", "energy"] and len(rows) == 4
    values = [float(v) for _, v in rows[1:]]
    assert values == sorted(values)
    loaded_names, images = use.load_images(folder, RES, RES)
    assert sorted(loaded_names) == sorted(names)
    scores = model.energy(sampling.prepare_real(images, 0.5), 0.5).tolist()
    expected = dict(zip(loaded_names, scores, strict=True))
    for name, value in rows[1:]:
        assert float(value) == pytest.approx(expected[name], rel=1e-4, abs=1e-6)
    # Preprocessing is the dataset tool's: crop + Lanczos to a power of two, then 2x2 boxes.
    from progressive.core.images import box_down, crop_resize

    big = crop_resize(Image.open(folder / "z.jpg"), 32)
    assert np.array_equal(
        load_image_file(folder / "z.jpg", RES, RES * 2).permute(1, 2, 0).numpy(), box_down(big)
    )


def test_raw_energy_scores_with_the_energy_model_itself(run_dir, model, tmp_path):
    data = model.config.data.path
    scores = {}
    for flag in ([], ["--raw-energy"]):
        out = tmp_path / f"e{len(flag)}.csv"
        r = invoke("energy", "--ckpt", run_dir, "--data", data, "--n", 4, "--out", out, *flag)
        assert r.exit_code == 0, r.output
        scores[bool(flag)] = {i: float(v) for i, v in list(csv.reader(out.open()))[1:]}
    raw = load_run(run_dir, device="cpu", raw_energy=True)
    assert raw.energy is not model.energy  # the run keeps an average, used by default
    _, images = use.load_images(data, model.res, model.config.schedule.max_res, 4)
    x = sampling.prepare_real(images, model.alpha)
    for run, key in ((model, False), (raw, True)):
        want = run.energy(x, model.alpha).tolist()
        got = [scores[key][str(i)] for i in range(4)]
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert scores[False] != pytest.approx(scores[True], rel=1e-3)
    # Model-choice flags only where the command uses that network.
    r = invoke("energy", "--ckpt", run_dir, "--data", data, "--out", out, "--raw-generator")
    assert r.exit_code == 2 and "--raw-generator" in r.output


def test_energy_of_a_dataset(run_dir, model, tmp_path):
    data = model.config.data.path
    out = tmp_path / "e.csv"
    r = invoke("energy", "--ckpt", run_dir, "--data", data, "--n", 5, "--out", out, "--res", 8)
    assert r.exit_code == 0, r.output
    rows = list(csv.reader(out.open()))[1:]
    assert sorted(int(i) for i, _ in rows) == [0, 1, 2, 3, 4]


def test_evaluate_help_names_every_metric():
    from progressive.use.evaluate import METRICS

    text = " ".join(CliRunner().invoke(main, ["evaluate", "--help"]).output.split())
    listed = text.split("--metrics TEXT", 1)[1].split("--ood", 1)[0]
    missing = [m for m in METRICS if f" {m}," not in listed and f" {m}." not in listed]
    assert not missing, listed


def test_evaluate_appends_metrics_and_skips_fid_without_weights(run_dir, model, tmp_path):
    data = model.config.data.path
    r = invoke_evaluate(run_dir, data, "swd,recon,fid,kid", 16)
    assert r.exit_code == 0, r.output
    assert "FID/KID skipped" in r.output
    r = invoke_evaluate(run_dir, data, "swd", 16)
    assert r.exit_code == 0, r.output
    swd = [json.loads(line) for line in (run_dir / "metric-swd.jsonl").read_text().splitlines()]
    recon = [json.loads(line) for line in (run_dir / "metric-recon.jsonl").read_text().splitlines()]
    assert len(swd) == 2 and len(recon) == 1
    assert not (run_dir / "metric-fid.jsonl").exists()
    for rec in swd + recon:
        assert rec["images_shown"] == 56 and rec["res"] == RES and rec["alpha"] == 0.5
        assert rec["n"] == 16 and rec["time"] > 0 and rec["value"] > 0
    assert swd[0]["value"] == swd[1]["value"]  # same seed, same number
    assert swd[0]["levels"] == [16]
    assert recon[0]["mean_image_baseline"] > 0
    # the PCA baseline is fitted on the images training used, not the run's held-out ones
    trained, held = split_counts(len(ImageDataset(data, RES)), model.config.data.holdout)
    assert held > 0 and recon[0]["pca_fit"]["of"] == trained


def test_evaluate_fid_kid_with_stand_in_weights(run_dir, model, tmp_path, monkeypatch):
    class StandIn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 6, 3)

        def forward(self, x):
            return (torch.tanh(self.conv(x.float() / 128 - 1)).mean(dim=(2, 3)),)

    weights = tmp_path / "w.pth"
    weights.write_bytes(b"stand-in")
    monkeypatch.setattr(inception, "load_inception", lambda path, device: StandIn())
    data = model.config.data.path
    r = invoke_evaluate(run_dir, data, "fid,kid", 12, "--inception-weights", weights)
    assert r.exit_code == 0, r.output
    fid = json.loads((run_dir / "metric-fid.jsonl").read_text().splitlines()[-1])
    kid = json.loads((run_dir / "metric-kid.jsonl").read_text().splitlines()[-1])
    assert fid["value"] > 0 and np.isfinite(kid["value"])
    assert len(list((run_dir / "metric-cache").glob("*.npz"))) == 1


def test_info_checkpoint(run_dir):
    r = invoke("info", run_dir)
    assert r.exit_code == 0, r.output
    run = load_run(run_dir)
    nets = networks_of(run.config)
    lines = {line.split()[0]: line for line in r.output.splitlines() if line.strip()}
    assert lines["resolution"].split()[1] == "16x16"
    assert lines["alpha"].split()[1] == "0.5"
    assert "56" in lines["images"] and "fade-in" in lines["stage"]
    for name in ("generator", "energy", "inference"):
        assert lines[name].split()[1] == f"{num_parameters(nets[name]):,}"


def _one_line_error(result, *words, status=1):
    assert result.exit_code == status, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    for w in words:
        assert w in lines[0]


@pytest.mark.parametrize("given", [["--to"], ["--from"], ["--from", "--seeds"]])
def test_interpolate_between_images_needs_both_and_nothing_else(run_dir, tmp_path, given):
    image = tmp_path / "a.png"
    write_photo(image, 20, 20, 0)
    args = {"--to": image, "--from": image, "--seeds": "1,2"}
    r = invoke("interpolate", "--ckpt", run_dir, "--out", tmp_path / "o.png",
               *[x for option in given for x in (option, args[option])])
    words = "exactly one of" if "--seeds" in given else "--from and --to go together"
    _one_line_error(r, words)
    assert not (tmp_path / "o.png").exists()


def test_bad_inputs(run_dir, tmp_path):
    out = tmp_path / "o.png"
    _one_line_error(invoke("sample", "--ckpt", tmp_path / "nope", "--out", out), "does not exist")
    _one_line_error(invoke("sample", "--ckpt", run_dir, "--res", 32, "--out", out), "--res 32")
    _one_line_error(
        invoke("interpolate", "--ckpt", run_dir, "--seeds", "3", "--out", out), "two endpoints"
    )
    _one_line_error(
        invoke("interpolate", "--ckpt", run_dir, "--seeds", "1,2", "--out", tmp_path / "o.txt"),
        "extension",
    )
    _one_line_error(
        invoke("interpolate", "--ckpt", run_dir, "--seeds", "3,x", "--out", out), "--seeds"
    )
    assert latents.parse_seeds("3, 7,10-12") == [3, 7, 10, 11, 12]
    # Option ranges are click's, reported on one line with click's usage status.
    _one_line_error(
        invoke("interpolate", "--ckpt", run_dir, "--seeds", "1,2", "--steps", 1, "--out", out),
        "'--steps': 1 is not in the range x>=2",
        status=2,
    )
    # A damaged copy of the newest snapshot, and one of an unknown version.
    snap = sorted(run_dir.glob("snapshot-*"))[-1]
    broken = tmp_path / "broken"
    shutil.copytree(snap, broken)
    (broken / "generator_ema.safetensors").write_bytes(b"garbage")
    _one_line_error(invoke("sample", "--ckpt", broken, "--out", out), "generator_ema")
    _one_line_error(invoke("info", broken), "generator_ema")
    future = tmp_path / "future"
    shutil.copytree(snap, future)
    state = json.loads((future / "state.json").read_text())
    (future / "state.json").write_text(json.dumps({**state, "version": 99}))
    _one_line_error(invoke("sample", "--ckpt", future, "--out", out), "version")
    # Image folders: empty, and one with an unreadable image.
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(
        invoke("energy", "--ckpt", run_dir, "--data", empty, "--out", tmp_path / "e.csv"),
        "no images",
    )
    bad = tmp_path / "bad"
    bad.mkdir()
    write_photo(bad / "good.png", 20, 20, seed=0)
    (bad / "broken.jpg").write_bytes(b"not a jpeg")
    # energy scores the rest and reports the file it skipped, as the dataset tool does
    r = invoke("energy", "--ckpt", run_dir, "--data", bad, "--out", tmp_path / "e.csv")
    assert r.exit_code == 0, r.output
    assert "skipped" in r.output and "broken.jpg" in r.output and "1 skipped" in r.output
    assert [row[0] for row in csv.reader((tmp_path / "e.csv").open())][1:] == ["good.png"]
    _one_line_error(
        invoke("reconstruct", "--ckpt", run_dir, "--data", bad, "--out", out), "broken.jpg"
    )
    _one_line_error(
        invoke("reconstruct", "--ckpt", run_dir, "--data", tmp_path / "none", "--out", out),
        "does not exist",
    )
    small = tmp_path / "small"
    small.mkdir()
    write_photo(small / "tiny.png", 8, 8, seed=0)
    _one_line_error(
        invoke("energy", "--ckpt", run_dir, "--data", small, "--out", tmp_path / "e.csv"),
        "tiny.png",
    )
    _one_line_error(invoke("evaluate", "--ckpt", run_dir, "--data", tmp_path / "none"))
    _one_line_error(
        invoke("evaluate", "--ckpt", run_dir, "--data", run_dir, "--metrics", "foo"), "foo"
    )


def test_swd_baseline_generator_is_the_one_training_started_from(run_dir, model):
    from progressive.use.evaluate import _initial_generator

    start = load_file(run_dir / "snapshot-000000000" / "generator.safetensors")
    rebuilt = _initial_generator(model).state_dict()
    assert start.keys() == rebuilt.keys()
    for key, value in start.items():
        assert torch.equal(value, rebuilt[key]), key
    r = invoke_evaluate(run_dir, model.config.data.path, "swd", 16)
    assert r.exit_code == 0 and "at initialization" in r.output, r.output
    last = json.loads((run_dir / "metric-swd.jsonl").read_text().splitlines()[-1])
    assert last["at_init"] > 0 and last["at_init"] != last["value"]


def test_load_images_spread_keeps_every_part_of_a_sorted_set(tmp_path):
    folder = tmp_path / "classes"
    for c in ("a", "b", "c"):
        (folder / c).mkdir(parents=True)
        for k in range(4):
            write_photo(folder / c / f"{k}.png", 16, 16, seed=k)
    first, _ = use.load_images(folder, RES, RES, 6)
    assert {name.split("/")[0] for name in first} == {"a", "b"}  # the first 6: two classes
    names, images = use.load_images(folder, RES, RES, 6, spread=True)
    assert names == ["a/0.png", "a/2.png", "b/0.png", "b/2.png", "c/0.png", "c/2.png"]
    assert images.shape == (6, 3, RES, RES)
    assert len(use.load_images(folder, RES, RES, 50, spread=True)[0]) == 12


def test_oversized_grids_and_animations_are_refused_in_one_line(run_dir, tmp_path, monkeypatch):
    from progressive.core import grids
    from progressive.use import generate as gen

    monkeypatch.setattr(grids, "GRID_PIXELS", 10 * RES * RES)  # a grid of 10 images at most
    r = invoke("sample", "--ckpt", run_dir, "--n", 11, "--out", tmp_path / "s.png")
    assert r.exit_code == 1 and "--outdir" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "s.png").exists()
    r = invoke("interpolate", "--ckpt", run_dir, "--seeds", "1,2", "--steps", 11,
               "--out", tmp_path / "w.png")
    assert r.exit_code == 1 and "--steps 11" in r.output
    monkeypatch.setattr(gen, "MAX_FRAMES", 5)
    r = invoke("interpolate", "--ckpt", run_dir, "--seeds", "1,2", "--steps", 6,
               "--out", tmp_path / "w.gif")
    assert r.exit_code == 1 and "at most 5" in r.output


def test_sample_outdir_streams_the_same_images_as_one_call(run_dir, model, tmp_path, monkeypatch):
    from progressive.model import sampling as smp

    want = smp.sample(model.generator, 7, 3, model.latent, RES, model.alpha)
    monkeypatch.setattr(smp, "LATENT_CHUNK", 7)  # one chunk: the same latents as one call
    r = invoke("sample", "--ckpt", run_dir, "--n", 7, "--seed", 3, "--outdir", tmp_path / "d")
    assert r.exit_code == 0, r.output
    files = sorted((tmp_path / "d").glob("*.png"))
    assert len(files) == 7
    got = np.asarray(Image.open(files[6]).convert("RGB"))
    assert np.array_equal(got, as_hwc(want[6:7])[0])
    monkeypatch.setattr(smp, "LATENT_CHUNK", 3)  # several chunks, every image written
    r = invoke("sample", "--ckpt", run_dir, "--n", 7, "--outdir", tmp_path / "e")
    assert r.exit_code == 0 and len(list((tmp_path / "e").glob("*.png"))) == 7


def test_whole_set_functions_take_their_batched_forms_arguments(model):
    batched = {sampling.sample: sampling.sample_batches, refine: refine_batches,
               sampling.generate: sampling.generate_batches}
    for whole, batches in batched.items():
        assert whole.__name__ + "_batches" == batches.__name__ and whole.__doc__
        params = inspect.signature(whole).parameters
        assert params.keys() == inspect.signature(batches).parameters.keys()
    empty = sampling.sample(model.generator, 0, 3, model.latent, RES, model.alpha)
    assert empty.shape == (0, 3, RES, RES)
    z = torch.zeros(0, model.latent)
    assert sampling.generate(model.generator, z, RES, model.alpha).shape == (0, 3, RES, RES)
    refined = refine(model.generator, model.energy, z, RES, model.alpha, Langevin(steps=1))
    assert refined.shape == (0, 3, RES, RES)
    two = sampling.sample(model.generator, 2, 3, model.latent, RES, model.alpha)
    assert torch.equal(two, torch.cat(list(sampling.sample_batches(
        model.generator, 2, 3, model.latent, RES, model.alpha))))
