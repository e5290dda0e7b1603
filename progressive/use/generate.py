"""The work of the commands that use a trained run: image inputs, latent walks and videos
written to files, energy scores written to CSV.

Built from `loading.load_run` (the networks and where to use them), `latents`, `sampling`
and `grids`; evaluation is in `evaluation`.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from progressive.core.errors import UserError
from progressive.core.files import atomic_write, check_suffix, write_text_atomic
from progressive.core.grids import grid_capacity, save_animation, save_grid, to_frames
from progressive.core.images import EXTENSIONS, Reject, image_files, load_image_file
from progressive.data.format import META_NAME
from progressive.data.reader import ImageDataset
from progressive.model.latents import seed_latents, smooth_latents, walk_latents
from progressive.model.sampling import encode, generate_batches, sample_energies
from progressive.run.loading import LoadedRun
from progressive.use import inpaint as fill
from progressive.use import walk_energy

# --------------------------------------------------------------------------- image input


def load_images(
    source: str | os.PathLike, res: int, max_res: int, n: int | None = None,
    spread: bool = False, skipped: list[tuple[str, str]] | None = None,
) -> tuple[list[str], Tensor]:
    """Images from a dataset directory (meta.json) or a folder of image files.

    Returns names (a dataset's global indices or a folder's relative paths) and uint8
    (N, 3, res, res); the first `n` images when `n` is given, or with `spread` `n` images
    evenly spaced over the whole set (a set stored class by class then keeps every class).
    With `skipped`, a file that cannot be used is left out and (path, reason) appended there,
    as the dataset tool does; without it, it is a one-line error.
    """
    src = Path(source)
    if not src.exists():
        raise UserError(f"--data {src} does not exist; pass a dataset or a folder of images")
    if (src / META_NAME).is_file():
        ds = ImageDataset(src, res)
        if len(ds) == 0:
            raise UserError(f"dataset {src} holds no images")
        indices = _pick(len(ds), n, spread)
        return [str(i) for i in indices], ds.batch(indices)
    if not src.is_dir():
        raise UserError(f"--data {src} is neither a dataset nor a folder of images")
    files = image_files(src)
    files = [files[i] for i in _pick(len(files), n, spread)]
    if not files:
        raise UserError(f"--data {src} holds no images ({', '.join(EXTENSIONS)})")
    names, images = [], []
    for name in files:
        try:
            images.append(load_image_file(src / name, res, max_res))
        except Reject as e:
            if skipped is None:
                raise UserError(f"cannot use image {src / name}: {e}") from None
            skipped.append((str(src / name), str(e)))
            continue
        names.append(name)
    if not images:
        path, reason = skipped[0]
        raise UserError(f"--data {src}: none of its {len(files)} image file(s) can be used "
                        f"(first: {path}: {reason})")
    return names, torch.stack(images)


def _pick(count: int, n: int | None, spread: bool) -> list[int]:
    """Indices of the first `n` of `count` items, or of `n` evenly spaced ones."""
    if n is None or n >= count:
        return list(range(count))
    return [i * count // n for i in range(n)] if spread else list(range(n))


def read_image_file(path: str | os.PathLike, res: int, max_res: int) -> Tensor:
    """`images.load_image_file`, with a one-line error naming an unusable file."""
    try:
        return load_image_file(path, res, max_res)
    except Reject as e:
        raise UserError(f"cannot use image {path}: {e}") from None


# --------------------------------------------------------------------------- walks and videos


MAX_FRAMES = 100_000  # frames one animation may hold (almost an hour at 30 fps)


def interpolate(
    run: LoadedRun,
    out: str | os.PathLike,
    *,
    seeds: list[int] | None = None,
    endpoints_images: Tensor | None = None,
    steps: int = 8,
    spherical: bool = False,
    fps: float = 10.0,
    energy_csv: str | os.PathLike | None = None,
    names: list[str] | None = None,
) -> Tensor | None:
    """Latent walks written to `out`: .png a grid, one row per walk; .gif/.mp4 one frame per
    step, walks joined end to start (walks * (steps - 1) + 1 frames), written frame by frame.
    Returns the energy of every image (walks, steps) with `energy_csv`, else None.

    With `energy_csv`, the energy of every frame goes there (one row per frame) and a .png/.jpg
    grid gets the energy curve of each walk underneath; `names` label the endpoints.
    A grid beyond `grid_capacity` images or an animation beyond MAX_FRAMES is refused.
    """
    out = check_suffix(out, (".png", ".jpg", ".gif", ".mp4"), "--out")
    animated = out.suffix.lower() in (".gif", ".mp4")
    walks = len(endpoints_images) - 1 if endpoints_images is not None else len(seeds or []) - 1
    total = max(walks, 1) * steps
    limit = MAX_FRAMES if animated else grid_capacity(run.res)
    if total > limit:
        what = "an animation" if animated else f"a grid at {run.res}px"
        raise UserError(f"--steps {steps}: {total} images, {what} holds at most {limit}; "
                        "use fewer --steps or seeds")
    if endpoints_images is not None:
        ends = encode(run.inference, endpoints_images, run.alpha)
    else:
        ends = seed_latents(seeds or [], run.latent)
    z = walk_latents(ends, steps, spherical)
    # Consecutive walks share an endpoint: an animation shows it once so every frame lasts as
    # long.
    frames = [(0, 0)] + [(w, i) for w in range(len(z)) for i in range(1, steps)]
    order = [w * steps + i for w, i in frames] if animated else list(range(len(z) * steps))
    flat = z.flatten(0, 1)[order]
    kept: list[Tensor] = []
    scores: list[Tensor] = []

    def batches():
        for x in generate_batches(run.generator, flat, run.res, run.alpha):
            if energy_csv is not None:
                scores.append(sample_energies(run.energy, x, run.alpha))
            if animated:
                yield to_frames(x)
            else:
                kept.append(x)

    if animated:
        save_animation(batches(), out, fps)
    else:
        for _ in batches():
            pass
    if energy_csv is None:
        if not animated:
            save_grid(torch.cat(kept), out, nrow=steps)
        return None
    values = torch.cat(scores)
    if animated:  # every image's energy by (walk, step); shared endpoints scored once
        full = torch.empty(len(z), steps)
        for (w, i), v in zip(frames, values, strict=True):
            full[w, i] = v
        for w in range(1, len(z)):
            full[w, 0] = full[w - 1, steps - 1]
        values = full
    else:
        values = values.view(len(z), steps)
    names = names or [str(s) for s in seeds or range(len(ends))]
    walk_energy.write_walk_csv(energy_csv, values, names, frames if animated else None)
    if not animated:
        walk_energy.save_grid_with_curve(torch.cat(kept), values, names, out)
    return values


def smooth_video(
    run: LoadedRun,
    out: str | os.PathLike,
    seconds: float,
    fps: float,
    smoothing_sec: float = 1.0,
    seed: int = 0,
) -> int:
    """A video of Gaussian-smoothed random latents; returns the number of frames."""
    out = check_suffix(out, (".gif", ".mp4"), "--out")
    frames = max(1, round(seconds * fps))
    z = smooth_latents(frames, run.latent, smoothing_sec * fps, seed)
    batches = generate_batches(run.generator, z, run.res, run.alpha)
    save_animation((to_frames(x) for x in batches), out, fps)
    return frames


# --------------------------------------------------------------------------- energy scores


def write_energy_csv(names: list[str], scores: Tensor, path: str | os.PathLike) -> list[tuple]:
    """CSV of (image, energy) sorted by ascending energy; returns the sorted rows."""
    rows = sorted(zip(names, scores.tolist(), strict=True), key=lambda r: r[1])
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["image", "energy"])
    writer.writerows((name, f"{value:.6g}") for name, value in rows)
    write_text_atomic(path, buf.getvalue())
    return rows


# --------------------------------------------------------------------------- inpainting


def inpaint(
    run: LoadedRun, images: str | os.PathLike, out: str | os.PathLike, how,
    *, masks_dir: str | None, occlude: str | None, seed: int, n: int | None, max_res: int,
) -> int:
    """Complete the images of `images` (a folder or dataset) whose pixels the masks hide;
    writes one PNG per image and grid.png (occluded | completed | original) into `out`."""
    names, real = load_images(images, run.res, max_res, n)
    if occlude is not None:
        masks = fill.occlusion_masks(occlude, seed, len(real), max_res, run.res)
    elif (Path(images) / META_NAME).is_file():
        raise UserError("--masks needs a folder of images; for a dataset use --occlude")
    else:
        masks = fill.file_masks(masks_dir, images, names, max_res, run.res)
    completed = fill.complete(run, real, masks, how)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, image in zip(names, completed, strict=True):
        path = out / Path(name).with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:  # the uint8 pixels as they are: visible ones exact
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
    shown = slice(0, 16)  # the grid shows the first 16: only they are converted
    rows = torch.stack([fill.occluded_view(real[shown], masks[shown]),
                        completed[shown].float() / 127.5 - 1,
                        real[shown].float() / 127.5 - 1], 1).flatten(0, 1)
    save_grid(rows, out / "grid.png", nrow=3 * min(4, len(real)))
    return len(real)
