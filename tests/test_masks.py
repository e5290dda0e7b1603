"""Incomplete data: masks in datasets, and training that never reads a missing pixel."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from tiny import TINY_NETWORKS, config

from datasets_prep import make_source, write_dataset
from progressive.config.schedule import Schedule
from progressive.core.errors import UserError
from progressive.data import masks as mk
from progressive.data.reader import ImageDataset
from progressive.train.trainer import Trainer


@pytest.mark.parametrize("kind", mk.KINDS)
def test_masks_are_deterministic_and_sized_with_resolution(kind):
    a = mk.make_mask(kind, 3, 7, 64)
    assert np.array_equal(a, mk.make_mask(kind, 3, 7, 64))
    assert not np.array_equal(a, mk.make_mask(kind, 3, 8, 64))
    missing = 1 - a.mean()
    expected = {"pepper50": 0.5, "pepper70": 0.7, "block20": 400 / 4096,
                "block30": 900 / 4096}.get(kind)
    if kind.startswith("pepper"):
        assert abs(missing - expected) < 0.05
    elif kind.startswith("block") and kind != "blocks10":
        assert missing == pytest.approx(expected)
        # the same square at 128 px covers the same share of the image
        assert 1 - mk.make_mask(kind, 3, 7, 128).mean() == pytest.approx(expected)
    else:
        assert 100 / 4096 <= missing <= 1000 / 4096


def test_mask_pyramid_observed_only_when_all_parents_are():
    m = mk.make_mask("pepper50", 0, 0, 16)
    levels = mk.mask_pyramid(m)
    assert sorted(levels) == [4, 8, 16]
    up = levels[8].repeat(2, 0).repeat(2, 1)
    assert not (up & ~m).any()  # an observed parent pixel is never built on a missing child
    for i, j in [(0, 0), (3, 5), (7, 7)]:
        assert levels[8][i, j] == m[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].all()


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """A folder of 6 tiny colourful images and their source size."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / f"f{i}.png")
    return root


def test_occluded_dataset_reads_masks_consistent_with_meta(faces, tmp_path):
    out = tmp_path / "d"
    write_dataset(make_source("folder", str(faces)), out, 16, workers=0, progress=False,
                  occlude="block20", mask_seed=5)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["masks"]["kind"] == "block20" and meta["masks"]["seed"] == 5
    ds = ImageDataset(out, 16)
    images, masks = ds[[0, 3]]
    assert images.shape == (2, 3, 16, 16) and masks.shape == (2, 1, 16, 16)
    assert np.array_equal(masks[1, 0].numpy().astype(bool), mk.make_mask("block20", 5, 3, 16))
    low = ImageDataset(out, 8).masks([3])[0, 0].numpy().astype(bool)
    assert np.array_equal(low, mk.mask_pyramid(mk.make_mask("block20", 5, 3, 16))[8])
    # the images are those of a dataset without masks
    plain = tmp_path / "plain"
    write_dataset(make_source("folder", str(faces)), plain, 16, workers=0, progress=False)
    ds_plain = ImageDataset(plain, 16)
    assert not ds_plain.has_masks and isinstance(ds_plain[[0, 3]], torch.Tensor)
    assert torch.equal(ds_plain[[0, 3]], images)


def _mask_png(path, size, missing_box=(2, 2, 10, 10), values=(0, 255)):
    a = np.full((size[1], size[0]), values[1], dtype=np.uint8)
    x0, y0, x1, y1 = missing_box
    a[y0:y1, x0:x1] = values[0]
    Image.fromarray(a).save(path)


def test_mask_folder_is_read_with_crop_and_conservative_resize(faces, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    _mask_png(masks / "f1.png", (24, 20))
    out = tmp_path / "d"
    write_dataset(make_source("folder", str(faces)), out, 16, workers=0, progress=False,
                  masks_dir=masks)
    ds = ImageDataset(out, 16)
    m = ds.masks([0, 1])[:, 0].numpy().astype(bool)
    assert m[0].all()  # an image without a mask file is fully observed
    # source 24x20, crop x 2..22 -> 20x20, resized to 16: missing box covers x 0..8, y 2..10
    assert not m[1, 4, 4] and m[1, 15, 15]
    assert 1 - m[1].mean() > (8 * 8) / (20 * 20)  # never less missing than the source


@pytest.mark.parametrize("problem, message", [
    ("size", "masks must have their image's size"),
    ("binary", "not binary"),
    ("empty", "every pixel missing"),
    ("name", "has no image named"),
])
def test_bad_masks_give_one_line_and_write_nothing(faces, tmp_path, problem, message):
    masks = tmp_path / "masks"
    masks.mkdir()
    if problem == "size":
        _mask_png(masks / "f1.png", (20, 20))
    elif problem == "binary":
        _mask_png(masks / "f1.png", (24, 20), values=(0, 128))
        _mask_png(masks / "f2.png", (24, 20), values=(7, 255))
    elif problem == "empty":
        _mask_png(masks / "f1.png", (24, 20), missing_box=(0, 0, 24, 20))
    else:
        _mask_png(masks / "nope.png", (24, 20))
    out = tmp_path / "d"
    with pytest.raises(UserError, match=message) as e:
        write_dataset(make_source("folder", str(faces)), out, 16, workers=0, progress=False,
                      masks_dir=masks)
    assert "\n" not in str(e.value)
    assert not out.exists()


def test_make_lmdb_occlude_option(faces, tmp_path):
    from tools.make_lmdb import main

    out = tmp_path / "d"
    r = CliRunner().invoke(main, ["folder", str(faces), str(out), "--max-res", "8",
                                  "--workers", "0", "--occlude", "pepper50"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "meta.json").read_text())["masks"]["kind"] == "pepper50"
    r = CliRunner().invoke(main, ["folder", str(faces), str(tmp_path / "e"), "--max-res", "8",
                                  "--occlude", "nothing"])
    assert r.exit_code != 0


def _trainer(seed=0):
    cfg = config("demo", **TINY_NETWORKS, max_res=8, batch=4, workers=0, seed=seed)
    torch.manual_seed(0)
    return cfg, Trainer.create(cfg)


@pytest.mark.parametrize("images_shown", [0, 9000])  # stable 4x4, then 8x8 mid fade-in
def test_missing_pixel_values_change_neither_loss_nor_gradients(images_shown):
    from accelerate.state import AcceleratorState

    g = torch.Generator().manual_seed(1)
    cfg, _ = _trainer()
    phase = Schedule.from_config(cfg).at(images_shown)
    res = phase.res
    assert phase.alpha in (1.0, 0.5)
    real = torch.randint(0, 256, (4, 3, res, res), dtype=torch.uint8, generator=g)
    mask = torch.from_numpy(np.stack([
        mk.make_mask(k, 0, i, res) for i, k in enumerate(["block30", "pepper50"] * 2)
    ]))[:, None].to(torch.uint8)
    other = torch.where(mask.bool(), real,
                        torch.randint(0, 256, real.shape, dtype=torch.uint8, generator=g))
    assert not torch.equal(other, real)
    results = []
    for images in (real, other):
        AcceleratorState._reset_state(True)
        _, trainer = _trainer()
        stats = trainer.step(images, phase, images_shown, mask)
        params = {k: [p.detach().clone() for p in net.parameters()]
                  for k, net in trainer.unwrapped().items()}
        results.append((stats, params))
    (s1, p1), (s2, p2) = results
    assert s1.keys() == s2.keys()
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    for k in p1:
        assert all(torch.equal(a, b) for a, b in zip(p1[k], p2[k], strict=True)), k
    # and the mask matters: the same change without a mask changes the step
    AcceleratorState._reset_state(True)
    _, trainer = _trainer()
    s3 = trainer.step(other, phase, images_shown)
    assert not torch.equal(s3["rec"], s1["rec"])


def test_training_on_occluded_data_through_fade_in_and_resume(tmp_path):
    from test_training import TINY, assert_same_weights

    from progressive.train.loop import resolve_run, train

    data = tmp_path / "occluded"
    write_dataset(make_source("synthetic", "24"), data, 8, workers=0, progress=False,
                  occlude="blocks10")
    cfg = config("demo", **(TINY | {"data": str(data)}))
    full = train(cfg, tmp_path / "full", progress=False)
    stats = [json.loads(s) for s in (tmp_path / "full" / "stats.jsonl").read_text().splitlines()]
    assert {s["res"] for s in stats} == {4, 8} and any(0 < s["alpha"] < 1 for s in stats)
    assert all(np.isfinite(s["rec"]) for s in stats)
    half = train(config("demo", **(TINY | {"data": str(data), "total_kimg": 0.024})),
                 tmp_path / "parts", progress=False)
    assert half != full
    more = {"schedule.total_kimg": 0.064}
    cfg, run_dir, snapshot = resolve_run(cfg, more, tmp_path, "parts", "auto")
    assert snapshot == half
    resumed = train(cfg, run_dir, snapshot, progress=False)
    assert resumed.name == full.name
    assert_same_weights(full, resumed)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from test_training import TINY

    from progressive.train.loop import train

    root = tmp_path_factory.mktemp("run")
    data = root / "data"
    write_dataset(make_source("synthetic", "16"), data, 8, workers=0, progress=False)
    train(config("demo", **(TINY | {"data": str(data), "total_kimg": 0.056, "holdout": 0})),
          root / "run", progress=False)
    return root / "run", data


@pytest.mark.parametrize("how", [[], ["--z-steps", "3", "--energy-steps", "2"], ["--no-blend"]])
def test_inpaint_keeps_visible_pixels_bit_identical(tiny_run, faces, tmp_path, how):
    from progressive.cli.main import main
    from progressive.use.generate import load_images

    run, _ = tiny_run
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(6):
        _mask_png(masks / f"f{i}.png", (24, 20), missing_box=(i + 2, 3, i + 6, 7))
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["inpaint", "--ckpt", str(run), "--data", str(faces),
                                  "--masks", str(masks), "--outdir", str(out), "--device", "cpu",
                                  *how])
    assert r.exit_code == 0, r.output
    names, real = load_images(faces, 8, 8)
    from progressive.use.inpaint import file_masks

    m = file_masks(masks, faces, names, 8, 8).bool()
    assert (~m).any() and m.any()
    for name, image, mask in zip(names, real, m, strict=True):
        done = torch.from_numpy(np.array(Image.open(out / name))).permute(2, 0, 1)
        assert torch.equal(done[mask.expand(3, -1, -1)], image[mask.expand(3, -1, -1)])
    assert (out / "grid.png").is_file()


def test_inpaint_needs_one_mask_source(tiny_run, faces, tmp_path):
    from progressive.cli.main import main

    run, _ = tiny_run
    r = CliRunner().invoke(main, ["inpaint", "--ckpt", str(run), "--data", str(faces),
                                  "--outdir", str(tmp_path / "o")])
    assert r.exit_code == 1 and "exactly one of --masks DIR or --occlude KIND" in r.output


def test_recovery_metric_scores_model_and_mean_colour_fill(tiny_run):
    from progressive.cli.main import main
    from progressive.use.inpaint import mean_colour_fill, recovery_error

    run, data = tiny_run
    r = CliRunner().invoke(main, ["evaluate", "--ckpt", str(run), "--data", str(data),
                                  "--metrics", "recovery", "--occlude", "block30", "--n", "8",
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rec = json.loads((run / "metric-recovery.jsonl").read_text().splitlines()[-1])
    assert 0 < rec["value"] < 1 and rec["occlude"] == "block30"
    assert 0 < rec["mean_colour_mae"] < 1 and rec["psnr"] > 0
    assert 0 < rec["harmonic_mae"] < 1 and rec["harmonic_psnr"] > 0
    # the measure itself: a perfect fill scores 0, the mean-colour fill of a flat image too
    img = torch.full((1, 3, 8, 8), 100, dtype=torch.uint8)
    img[..., :4] = 50
    mask = torch.ones(1, 1, 8, 8, dtype=torch.uint8)
    mask[..., 2:6, 2:6] = 0
    assert recovery_error(img, img, mask)["mae"] == 0
    filled = mean_colour_fill(img, mask)
    assert torch.equal(filled[mask.bool().expand_as(img)], img[mask.bool().expand_as(img)])
    expected = ((100 - 75) * 8 + (75 - 50) * 8) / 16 / 255  # visible mean is 75 (48 of each)
    assert recovery_error(filled, img, mask)["mae"] == pytest.approx(expected, abs=1 / 255)


def test_grids_of_incomplete_data_never_show_missing_pixels(tmp_path):
    """The reals and reconstruction grids of a masked dataset show and encode only what
    training sees: changing missing pixels' values changes neither grid."""
    from progressive.train.loop import _save_grids, _save_reals

    cfg, trainer = _trainer()
    phase = Schedule.from_config(cfg).at(9000)  # 8x8 mid fade-in
    res = phase.res
    g = torch.Generator().manual_seed(2)
    real = torch.randint(0, 256, (4, 3, res, res), dtype=torch.uint8, generator=g)
    mask = torch.from_numpy(np.stack([mk.make_mask("block30", 0, i, res) for i in range(4)]))
    mask = mask[:, None].to(torch.uint8)
    other = torch.where(mask.bool(), real,
                        torch.randint(0, 256, real.shape, dtype=torch.uint8, generator=g))
    z = torch.randn(4, cfg.networks.latent, generator=g)
    grids = []
    for i, images in enumerate((real, other, other)):
        run = tmp_path / str(i)
        run.mkdir()
        fixed = {"z": z, "real": {res: images}, "mask": {res: mask} if i < 2 else {}}
        _save_reals(fixed, run, res, 2)
        _save_grids(trainer, run, fixed, phase, 9000)
        grids.append({p.name: p.read_bytes() for p in run.glob("*.png")})
    assert grids[0] == grids[1]
    assert len(grids[0]) == 3  # reals, samples, reconstructions
    # Without the masks the same images give other grids: the test can fail.
    assert grids[2] != grids[1]


def test_laplace_fill_is_harmonic_in_the_holes_and_keeps_the_rest():
    from progressive.use.inpaint import harmonic_fill, laplace_fill

    g = torch.Generator().manual_seed(0)
    values = torch.randn(3, 3, 16, 16, generator=g)
    observed = (torch.rand(3, 1, 16, 16, generator=g) > 0.5).float()
    observed[:, :, 3:12, 4:14] = 0
    observed[2] = 0  # nothing observed: nothing to interpolate
    v = laplace_fill(values, observed)
    hole = (observed == 0).expand_as(v)
    assert torch.equal(v[~hole], values[~hole])
    assert v[2].abs().max() == 0
    # a missing pixel's value, even nan, never enters
    assert torch.equal(laplace_fill(values.masked_fill(hole, float("nan")), observed), v)
    # every missing pixel is the mean of its neighbours inside the image
    cross = torch.tensor([[0.0, 1, 0], [1, 0, 1], [0, 1, 0]]).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    total = torch.nn.functional.conv2d(v, cross, padding=1, groups=3)
    count = torch.nn.functional.conv2d(torch.ones_like(v), cross, padding=1, groups=3)
    assert (v - total / count)[:2][hole[:2]].abs().max() < 1e-4
    # a linear ramp is harmonic, so a square hole in it is filled exactly
    ramp = torch.linspace(-1, 1, 16).view(1, 1, 1, 16).expand(1, 3, 16, 16)
    square = torch.ones(1, 1, 16, 16)
    square[..., 4:12, 4:12] = 0
    assert (laplace_fill(ramp, square) - ramp).abs().max() < 1e-4
    img = ((ramp + 1) * 127.5).round().to(torch.uint8)
    filled = harmonic_fill(img, square.to(torch.uint8))
    assert (filled.int() - img.int()).abs().max() <= 1


def test_laplace_fill_on_the_holes_box_equals_the_whole_frames_solution():
    from progressive.use.inpaint import laplace_fill, solve_harmonic

    g = torch.Generator().manual_seed(1)
    values = torch.randn(5, 3, 40, 40, generator=g)
    observed = torch.ones(5, 1, 40, 40)
    observed[0, :, 5:17, 20:31] = 0  # inside the image
    observed[1, :, 0:9, 30:40] = 0  # on two of its edges
    observed[2, :, 3:6, 3:6] = 0
    observed[2, :, 30:34, 12:20] = 0  # two holes far apart: one box holds both
    # image 3: nothing missing; image 4: holes all over it (solved with the whole frame)
    observed[4] = (torch.rand(1, 40, 40, generator=g) > 0.5).float()
    filled = laplace_fill(values, observed)
    known = observed.expand_as(values)
    whole = solve_harmonic(torch.where(known.bool(), values, 0), 1 - known)
    assert (filled - whole).abs().max() < 1e-4
    assert torch.equal(filled[3], values[3])
    assert (filled[[0, 1, 2, 4]] - values[[0, 1, 2, 4]]).abs().max() > 0.1  # holes were filled


def test_blend_carries_the_models_error_on_visible_pixels_into_the_holes():
    """A model that always draws the same image F, given images F + c: the blend moves the
    holes by c as well; without it they stay F."""
    from types import SimpleNamespace

    from progressive.core.images import to_float, to_uint8
    from progressive.use import inpaint

    res, c = 8, 0.25
    face = torch.linspace(-0.6, 0.6, res * res).view(1, 1, res, res).expand(2, 3, res, res)
    run = SimpleNamespace(
        res=res, alpha=1.0, device="cpu", energy=None,
        inference=lambda x, alpha: (torch.zeros(len(x), 4), torch.zeros(len(x), 4)),
        generator=lambda z, res, alpha: face[: len(z)],
    )
    images = to_uint8(face + c)
    mask = torch.ones(2, 1, res, res, dtype=torch.uint8)
    mask[:, :, 2:6, 1:5] = 0
    hole = (mask == 0).expand_as(face)
    for blend, expected in ((True, face + c), (False, face)):
        how = inpaint.Completion(em_rounds=1, z_steps=0, blend=blend, batch=2)
        done = to_float(inpaint.complete(run, images, mask, how))
        assert (done - expected)[hole].abs().max() < 2 / 255


def test_inpaint_batches_from_the_memory_budget_fill_alike(tiny_run, monkeypatch):
    from progressive.model import budget
    from progressive.run.loading import load_run
    from progressive.use import inpaint

    run = load_run(tiny_run[0], device="cpu")
    images = torch.randint(0, 256, (3, 3, run.res, run.res), dtype=torch.uint8)
    masks = inpaint.occlusion_masks("block20", 0, 3, run.res, run.res)
    how = inpaint.Completion(z_steps=2, energy_steps=1)
    assert how.batch is None  # sized from the budget, not a fixed count
    whole = inpaint.complete(run, images, masks, inpaint.Completion(z_steps=2, energy_steps=1,
                                                                    batch=3))
    monkeypatch.setattr(budget, "MEMORY", 1)  # one image per pass
    assert torch.equal(inpaint.complete(run, images, masks, how), whole)


def test_training_grids_stay_within_their_width_at_large_sizes(tmp_path, monkeypatch):
    from progressive.core import grids
    from progressive.train.loop import _save_grids, _save_reals

    assert [grids.grid_side(8, r) for r in (32, 256, 512, 1024)] == [8, 8, 8, 4]
    assert grids.grid_side(2, 1024) == 2
    cfg, trainer = _trainer()
    phase = Schedule.from_config(cfg).at(9000)
    res, g = phase.res, torch.Generator().manual_seed(3)
    fixed = {"z": torch.randn(64, cfg.networks.latent, generator=g), "mask": {},
             "real": {res: torch.randint(0, 256, (32, 3, res, res), dtype=torch.uint8,
                                         generator=g)}}
    widths = {}
    for side in (4096, 2 * res):  # the default, then a limit of two images across
        monkeypatch.setattr(grids, "GRID_SIDE", side)
        run = tmp_path / str(side)
        run.mkdir()
        _save_reals(fixed, run, res, cfg.run.grid_size)
        shown = _save_grids(trainer, run, fixed, phase, 9000)
        widths[side] = {p.name.split("-")[0]: Image.open(p).size for p in run.glob("*.png")}
        assert len(shown["samples"]) == min(8, side // res) ** 2
    pad = 2
    assert widths[4096]["samples"] == (8 * (res + pad) + pad,) * 2
    assert widths[2 * res]["samples"] == (2 * (res + pad) + pad,) * 2
    assert widths[2 * res]["reconstructions"] == (2 * (res + pad) + pad,) * 2
    assert widths[2 * res]["reals"][0] == 2 * (res + pad) + pad
