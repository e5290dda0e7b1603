"""Using a trained run: latent walks, samples, reconstructions, energies, metrics.

Library functions take the networks, a resolution and an alpha directly, so they work on any
`Generator`/`Energy`/`Inference`; `load_model` picks them out of a checkpoint. Images are uint8
(N, 3, R, R) on disk and float in [-1, 1] inside (x / 127.5 - 1). Real images pass through the
same fade-in blend as in training, so the energy and inference models see what they were
trained on.
"""

from __future__ import annotations

import csv
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.ndimage
import torch
from torch import Tensor

from progressive import metrics
from progressive.errors import UserError
from progressive.files import append_jsonl, atomic_write, write_text_atomic
from progressive.grids import GRID_PADDING, save_grid
from progressive.images import (
    EXTENSIONS,
    Reject,
    image_files,
    load_image_file,
    to_float,
    to_uint8,
)
from progressive.networks import fade_real
from progressive.run_folder import METRIC_CACHE_NAME, metric_file

# --------------------------------------------------------------------------- model and device


def pick_device(device: str | None) -> torch.device:
    """`device` as given, or cuda when available, else cpu."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(
            f"--device {device!r} is not a device (use cpu, cuda, cuda:1, ...)"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device here; use --device cpu")
    return dev


@dataclass
class Model:
    """The networks of one snapshot, at the resolution and alpha to work at."""

    generator: torch.nn.Module
    energy: torch.nn.Module
    inference: torch.nn.Module
    res: int
    alpha: float
    latent: int
    device: torch.device
    run: object  # progressive.checkpoint.LoadedRun


def load_model(
    ckpt: str | os.PathLike,
    device: str | None = None,
    res: int | None = None,
    raw_generator: bool = False,
) -> Model:
    """Networks of a run folder or snapshot; the generator average unless `raw_generator`."""
    from progressive.checkpoint import load_run

    dev = pick_device(device)
    run = load_run(ckpt, dev)
    work_res, alpha = run.at_resolution(res)
    return Model(
        generator=run.generator if raw_generator else run.generator_ema,
        energy=run.energy,
        inference=run.inference,
        res=work_res,
        alpha=alpha,
        latent=int(run.config["latent"]),
        device=dev,
        run=run,
    )


# --------------------------------------------------------------------------- latents


def seed_latents(seeds: list[int], latent: int) -> Tensor:
    """One z ~ N(0, I) per seed, each from its own seeded generator: (len(seeds), latent)."""
    return torch.stack(
        [torch.randn(latent, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    )


def parse_seeds(text: str) -> list[int]:
    """'3,7,10-12' -> [3, 7, 10, 11, 12] (seeds are non-negative)."""
    seeds: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",")):
            if "-" in part:
                lo, hi = part.split("-", 1)
                seeds.extend(range(int(lo), int(hi) + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise UserError(f"--seeds {text!r} is not a list like 3,7,10-12") from None
    if not seeds:
        raise UserError("--seeds is empty; give at least two seeds, e.g. --seeds 3,7")
    return seeds


def lerp(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    """(1 - t) z0 + t z1 for each t: (len(t), latent)."""
    t = t.view(-1, 1)
    return (1 - t) * z0 + t * z1


def slerp(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation: the angle moves linearly, the norm linearly between the ends."""
    t = t.view(-1, 1)
    n0, n1 = z0.norm(), z1.norm()
    u0, u1 = z0 / n0, z1 / n1
    omega = torch.arccos((u0 * u1).sum().clamp(-1.0, 1.0))
    if omega.abs() < 1e-6:  # parallel endpoints: plain lerp is exact
        return lerp(z0, z1, t)
    direction = (torch.sin((1 - t) * omega) * u0 + torch.sin(t * omega) * u1) / torch.sin(omega)
    return direction * ((1 - t) * n0 + t * n1)


def walk_latents(endpoints: Tensor, steps: int, spherical: bool = False) -> Tensor:
    """Walks through each consecutive pair of endpoints: (len(endpoints) - 1, steps, latent).

    Each walk starts exactly at its first endpoint and ends exactly at its second.
    """
    if steps < 2:
        raise UserError(f"--steps {steps}: a walk needs at least 2 steps")
    if len(endpoints) < 2:
        raise UserError("a walk needs at least two endpoints (e.g. --seeds 3,7)")
    t = torch.linspace(0, 1, steps)
    fn = slerp if spherical else lerp
    return torch.stack([fn(endpoints[i], endpoints[i + 1], t) for i in range(len(endpoints) - 1)])


def smooth_latents(frames: int, latent: int, sigma_frames: float, seed: int = 0) -> Tensor:
    """Random latents smoothed over time (a looping video), renormalised to unit RMS so each
    frame has about the norm sqrt(latent) that z ~ N(0, I) has: (frames, latent)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((frames, latent))
    z = scipy.ndimage.gaussian_filter(z, [sigma_frames, 0], mode="wrap")
    z /= np.sqrt(np.mean(np.square(z)))
    return torch.from_numpy(z).float()


# --------------------------------------------------------------------------- networks in batches


@torch.no_grad()
def generate(
    generator: torch.nn.Module, z: Tensor, res: int, alpha: float, batch: int = 64
) -> Tensor:
    """Images (N, 3, res, res), float in [-1, 1] (clamped), on the CPU."""
    device = next(generator.parameters()).device
    out = [
        generator(z[i : i + batch].to(device), res, alpha).float().clamp(-1, 1).cpu()
        for i in range(0, len(z), batch)
    ]
    return torch.cat(out) if out else torch.zeros(0, 3, res, res)


def prepare_real(images: Tensor, alpha: float) -> Tensor:
    """uint8 real images to the float input the energy and inference models saw in training."""
    return fade_real(to_float(images), alpha)


@torch.no_grad()
def encode(inference: torch.nn.Module, images: Tensor, alpha: float, batch: int = 64) -> Tensor:
    """Posterior means mu(x) of uint8 images: (N, latent), on the CPU."""
    device = next(inference.parameters()).device
    x = prepare_real(images, alpha)
    return torch.cat(
        [inference(x[i : i + batch].to(device), alpha)[0].cpu() for i in range(0, len(x), batch)]
    )


@torch.no_grad()
def energies(energy: torch.nn.Module, images: Tensor, alpha: float, batch: int = 64) -> Tensor:
    """Energy of each uint8 image (N,), on the CPU; low = data-like."""
    device = next(energy.parameters()).device
    x = prepare_real(images, alpha)
    return torch.cat(
        [energy(x[i : i + batch].to(device), alpha).cpu() for i in range(0, len(x), batch)]
    )


def reconstruct(
    generator: torch.nn.Module, inference: torch.nn.Module, images: Tensor, res: int, alpha: float
) -> Tensor:
    """g(mu(x)) for uint8 images: float (N, 3, res, res) in [-1, 1]."""
    return generate(generator, encode(inference, images, alpha), res, alpha)


def sample(
    generator: torch.nn.Module,
    n: int,
    seed: int,
    latent: int,
    res: int,
    alpha: float,
    truncation: float = 1.0,
) -> Tensor:
    """n images from z ~ N(0, I) (one seeded stream), pulled toward the mean latent 0 by
    `truncation` (z * psi)."""
    z = torch.randn(n, latent, generator=torch.Generator().manual_seed(seed)) * truncation
    return generate(generator, z, res, alpha)


# --------------------------------------------------------------------------- image input


def load_images(
    source: str | os.PathLike, res: int, max_res: int, n: int | None = None
) -> tuple[list[str], Tensor]:
    """Images from a dataset directory (meta.json) or a folder of image files.

    Returns names (a dataset's global indices or a folder's relative paths) and uint8
    (N, 3, res, res); the first `n` images when `n` is given.
    """
    from progressive.dataset_format import META_NAME

    src = Path(source)
    if not src.exists():
        raise UserError(f"--images {src} does not exist; pass a dataset or a folder of images")
    if (src / META_NAME).is_file():
        from progressive.data import ImageDataset

        ds = ImageDataset(src, res)
        count = len(ds) if n is None else min(n, len(ds))
        if count == 0:
            raise UserError(f"dataset {src} holds no images")
        return [str(i) for i in range(count)], ds.batch(list(range(count)))
    if not src.is_dir():
        raise UserError(f"--images {src} is neither a dataset nor a folder of images")
    files = image_files(src)[:n]
    if not files:
        raise UserError(f"--images {src} holds no images ({', '.join(EXTENSIONS)})")
    return files, torch.stack([read_image_file(src / name, res, max_res) for name in files])


def read_image_file(path: str | os.PathLike, res: int, max_res: int) -> Tensor:
    """`images.load_image_file`, with a one-line error naming an unusable file."""
    try:
        return load_image_file(path, res, max_res)
    except Reject as e:
        raise UserError(f"cannot use image {path}: {e}") from None


# --------------------------------------------------------------------------- output


def to_frames(images: Tensor) -> np.ndarray:
    """float [-1, 1] (N, 3, H, W) -> uint8 (N, H, W, 3) for imageio."""
    return to_uint8(images).permute(0, 2, 3, 1).numpy()


def save_animation(frames: np.ndarray, path: str | os.PathLike, fps: float) -> None:
    """Frames (N, H, W, 3) uint8 as a .gif (looping) or .mp4 (H.264 via imageio-ffmpeg)."""
    import imageio.v2 as imageio

    with atomic_write(path) as tmp:
        if tmp.suffix.lower() == ".gif":
            imageio.mimwrite(tmp, list(frames), format="GIF", duration=1000.0 / fps, loop=0)
        else:
            # macro_block_size=1: small frames are written as they are, not rescaled.
            imageio.mimwrite(
                tmp, list(frames), format="FFMPEG", fps=fps, codec="libx264", macro_block_size=1
            )


def check_output(path: str | os.PathLike, allowed: tuple[str, ...], option: str) -> Path:
    path = Path(path)
    if path.suffix.lower() not in allowed:
        raise UserError(f"{option} {path}: unknown extension; use one of {', '.join(allowed)}")
    return path


# --------------------------------------------------------------------------- commands' work


def interpolate(
    model: Model,
    out: str | os.PathLike,
    *,
    seeds: list[int] | None = None,
    endpoints_images: Tensor | None = None,
    steps: int = 8,
    spherical: bool = False,
    fps: float = 10.0,
) -> Tensor:
    """Latent walks written to `out`: .png a grid, one row per walk; .gif/.mp4 one frame per
    step, walks joined end to start (walks * (steps - 1) + 1 frames). Returns the images
    (walks * steps, 3, res, res)."""
    out = check_output(out, (".png", ".jpg", ".gif", ".mp4"), "--out")
    if endpoints_images is not None:
        ends = encode(model.inference, endpoints_images, model.alpha)
    else:
        ends = seed_latents(seeds or [], model.latent)
    z = walk_latents(ends, steps, spherical)
    images = generate(model.generator, z.flatten(0, 1), model.res, model.alpha)
    if out.suffix.lower() in (".gif", ".mp4"):
        # Consecutive walks share an endpoint: show it once so every frame lasts as long.
        keep = [0] + [w * steps + i for w in range(len(z)) for i in range(1, steps)]
        save_animation(to_frames(images[keep]), out, fps)
    else:
        save_grid(images, out, nrow=steps)
    return images


def smooth_video(
    model: Model,
    out: str | os.PathLike,
    seconds: float,
    fps: float,
    smoothing_sec: float = 1.0,
    seed: int = 0,
) -> int:
    """A video of Gaussian-smoothed random latents; returns the number of frames."""
    out = check_output(out, (".gif", ".mp4"), "--out")
    frames = max(1, round(seconds * fps))
    z = smooth_latents(frames, model.latent, smoothing_sec * fps, seed)
    save_animation(to_frames(generate(model.generator, z, model.res, model.alpha)), out, fps)
    return frames


def write_energy_csv(names: list[str], scores: Tensor, path: str | os.PathLike) -> list[tuple]:
    """CSV of (image, energy) sorted by ascending energy; returns the sorted rows."""
    rows = sorted(zip(names, scores.tolist(), strict=True), key=lambda r: r[1])
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["image", "energy"])
    writer.writerows((name, f"{value:.6g}") for name, value in rows)
    write_text_atomic(path, buf.getvalue())
    return rows


def summary(values: Tensor) -> dict[str, float]:
    """Mean, median, min and max of a 1-D tensor."""
    v = values.double()
    return {
        "mean": v.mean().item(),
        "median": v.median().item(),
        "min": v.min().item(),
        "max": v.max().item(),
    }


# --------------------------------------------------------------------------- evaluate

METRICS = ("swd", "recon", "fid", "kid")


def evaluate(
    model: Model,
    data: str | os.PathLike,
    names: list[str],
    n: int,
    *,
    inception_weights: str | None = None,
    seed: int = 0,
    notify=print,
) -> dict[str, dict]:
    """Compute the metrics `names` on `n` images of dataset `data` against `n` generated ones,
    append each to the run's `metric-<name>.jsonl`, and return the records by name.

    FID/KID without usable Inception weights are skipped with one notice (via `notify`).
    """
    from progressive.data import ImageDataset

    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise UserError(
            f"--metrics: unknown {', '.join(unknown)}; choose from {', '.join(METRICS)}"
        )
    run = model.run
    ds = ImageDataset(data, model.res)
    n = min(n, len(ds))
    if n < 2:
        raise UserError(f"--data {data} has {len(ds)} image(s); metrics need at least 2")
    real = ds.batch(list(range(n)))
    real_in = to_uint8(prepare_real(real, model.alpha))
    fake = None
    if {"swd", "fid", "kid"} & set(names):
        fake = sample(model.generator, n, seed, model.latent, model.res, model.alpha)
    base = {
        "images_shown": run.images_shown,
        "res": model.res,
        "alpha": model.alpha,
        "snapshot": str(run.snapshot),
        "data": str(data),
        "n": n,
    }
    results: dict[str, dict] = {}

    def record(name: str, value: float, **extra) -> None:
        results[name] = {"metric": name, **base, "value": value, **extra, "time": time.time()}
        append_jsonl(metric_file(run.run_dir, name), results[name])

    if "swd" in names:
        if model.res < metrics.SWD_MIN_RES:
            notify(
                f"swd skipped: needs at least {metrics.SWD_MIN_RES}px, the model is at "
                f"{model.res}px"
            )
        else:
            swd = metrics.sliced_wasserstein(real_in, fake, seed=seed)
            # The same measurement for the run's generator as initialised (same seed), the
            # baseline that training should beat.
            initial = _initial_generator(run.config).to(model.device)
            fake0 = sample(initial, n, seed, model.latent, model.res, model.alpha)
            swd0 = metrics.sliced_wasserstein(real_in, fake0, seed=seed)
            record(
                "swd", swd["mean"], levels=swd["levels"], per_level=swd["swd"], at_init=swd0["mean"]
            )
    if "recon" in names:
        recon = reconstruct(model.generator, model.inference, real, model.res, model.alpha)
        err = metrics.reconstruction_error(real_in, recon)
        train_mean = _training_images(run, model.res, n)
        baseline = metrics.mean_image_baseline(
            train_mean if train_mean is not None else real, real_in
        )
        record(
            "recon",
            err.mean().item(),
            median=err.median().item(),
            max=err.max().item(),
            mean_image_baseline=baseline.mean().item(),
        )
    wanted = [m for m in ("fid", "kid") if m in names]
    if wanted:
        try:
            extractor = metrics.load_inception(inception_weights, model.device)
        except metrics.InceptionUnavailable as e:
            notify(str(e))
        else:
            weights = Path(inception_weights)
            cache = metrics.real_feature_cache(
                Path(run.run_dir) / METRIC_CACHE_NAME, Path(data), model.res, n, weights
            )
            f_real = metrics.cached_real_features(
                cache, lambda: metrics.inception_features(extractor, real_in)
            )
            f_fake = metrics.inception_features(extractor, fake)
            scores = metrics.fid_kid(f_real, f_fake, kid_subset_size=min(1000, n), seed=seed)
            if "fid" in wanted:
                record("fid", scores["fid"])
            if "kid" in wanted:
                record("kid", scores["kid"], std=scores["kid_std"])
    return results


def _initial_generator(cfg: dict) -> torch.nn.Module:
    """The generator exactly as training started it."""
    from progressive.networks import initial_networks

    return initial_networks(cfg)["generator"].eval().requires_grad_(False)


def _training_images(run, res: int, n: int) -> Tensor | None:
    """Up to `n` images of the run's own training dataset, when it is still there."""
    from progressive.data import ImageDataset

    data = run.config.get("data")
    if not data or not Path(data).is_dir():
        return None
    try:
        ds = ImageDataset(data, res)
    except UserError:
        return None
    return ds.batch(list(range(min(n, len(ds)))))


def grid_size(count: int, res: int, nrow: int, padding: int = GRID_PADDING) -> tuple[int, int]:
    """(width, height) in pixels of a torchvision grid of `count` images of side `res`."""
    cols = min(nrow, count)
    rows = -(-count // nrow)
    return cols * (res + padding) + padding, rows * (res + padding) + padding

