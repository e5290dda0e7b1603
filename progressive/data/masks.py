"""Observation masks of incomplete images: making them, their pyramid, storing and reading them.

A mask is True (1) where a pixel is observed and False (0) where it is missing. Masks are made
at a dataset's max_res; a lower-resolution pixel is observed only when all four of its parents
are (a 2x2 min-pool), so a stored low-resolution image - the box average of its parents - never
carries information from a missing pixel.

Kinds (sized at 64 px and scaled with the resolution, deterministic in (seed, index)):
`pepperP` P% of the pixels missing, independently (one grain is one 64-px pixel); `blockK` one
KxK square at a random place; `blocks10` ten 10x10 squares at random places (they may overlap).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import lmdb
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from progressive.core.errors import UserError
from progressive.data.format import image_key

KINDS = ("pepper50", "pepper70", "block20", "block30", "blocks10")
MASKS_NAME = "masks.lmdb"
REFERENCE_RES = 64  # the resolution at which the kinds' sizes are given
RULE = "a pixel below max_res is observed only when all four of its parents are (2x2 min-pool)"


def check_kind(kind: str) -> str:
    """`kind`, or a one-line error naming the valid ones."""
    if kind not in KINDS:
        raise UserError(f"--occlude {kind!r} is not one of {', '.join(KINDS)}")
    return kind


def make_mask(kind: str, seed: int, index: int, res: int) -> np.ndarray:
    """The (res, res) bool mask of image `index` for `kind`: a pure function of its arguments."""
    check_kind(kind)
    rng = np.random.default_rng([int(seed), int(index), KINDS.index(kind)])
    scale = res / REFERENCE_RES
    observed = np.ones((res, res), dtype=bool)
    if kind.startswith("pepper"):
        share = int(kind[len("pepper"):]) / 100
        grain = max(1, round(scale))
        n = math.ceil(res / grain)
        small = rng.random((n, n)) >= share
        observed = np.kron(small, np.ones((grain, grain), dtype=bool))[:res, :res]
        return np.ascontiguousarray(observed)
    side, count = (10, 10) if kind == "blocks10" else (int(kind[len("block"):]), 1)
    side = min(res, max(1, round(side * scale)))
    for _ in range(count):
        top, left = rng.integers(0, res - side + 1, size=2)
        observed[top : top + side, left : left + side] = False
    return observed


def mask_pyramid(mask: np.ndarray, min_res: int = 4) -> dict[int, np.ndarray]:
    """{res: mask} from the mask's size down to `min_res`, each level the 2x2 min of the one
    above (observed only when all four parents are)."""
    levels = {mask.shape[0]: mask}
    m = mask
    while m.shape[0] > min_res:
        m = m[0::2, 0::2] & m[1::2, 0::2] & m[0::2, 1::2] & m[1::2, 1::2]
        levels[m.shape[0]] = m
    return levels


def pack(mask: np.ndarray) -> bytes:
    """A bool mask as bytes, one bit per pixel."""
    return np.packbits(mask.reshape(-1)).tobytes()


def unpack(value: bytes, res: int) -> np.ndarray:
    """Bytes from `pack` back to a (res, res) bool mask."""
    bits = np.unpackbits(np.frombuffer(value, dtype=np.uint8), count=res * res)
    return bits.reshape(res, res).astype(bool)


# ---- masks from files ---------------------------------------------------------------------


def load_mask_file(path: str | os.PathLike, image_size: tuple[int, int], res: int) -> np.ndarray:
    """A mask PNG (white or 1 = observed, black or 0 = missing) of an image of `image_size`
    (w, h), taken through the dataset's centre square crop to (res, res).

    The image is resized with Lanczos, whose kernel reaches 3 output pixels around each pixel's
    centre; a resized pixel is observed only when no missing source pixel lies in that reach,
    so a stored pixel never depends on a missing one."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            size = img.size
            a = np.asarray(img.convert("L") if img.mode not in ("L", "1") else img)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"mask {path} is not a readable image ({e})") from None
    if size != tuple(image_size):
        raise UserError(
            f"mask {path} is {size[0]}x{size[1]} but its image is "
            f"{image_size[0]}x{image_size[1]}; masks must have their image's size"
        )
    values = np.unique(a)
    if a.dtype == bool:
        observed_src = a
    elif set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 1}:
        observed_src = a > 0
    else:
        raise UserError(
            f"mask {path} is not binary (values {values[:4].tolist()}...); use 0 for missing "
            "and 255 (or 1) for observed pixels"
        )
    if not observed_src.any():
        raise UserError(f"mask {path} marks every pixel missing; an image needs observed pixels")
    w, h = size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    crop = observed_src[top : top + side, left : left + side]
    if side == res:
        out = crop
    else:
        out = _resized_observed(~crop, res)
    if not out.any():
        raise UserError(
            f"mask {path} leaves no observed pixel at {res}x{res} after the centre crop"
        )
    return np.ascontiguousarray(out)


def _resized_observed(missing: np.ndarray, res: int) -> np.ndarray:
    """Observed at `res`: no missing source pixel within 3 output pixels' reach (Lanczos-3)."""
    side = missing.shape[0]
    f = side / res
    csum = np.zeros((side + 1, side + 1), dtype=np.int64)
    csum[1:, 1:] = missing.cumsum(0).cumsum(1)
    centres = (np.arange(res) + 0.5) * f
    lo = np.clip(np.floor(centres - 3 * f), 0, side).astype(int)
    hi = np.clip(np.ceil(centres + 3 * f), 0, side).astype(int)
    count = (csum[hi][:, hi] - csum[lo][:, hi] - csum[hi][:, lo] + csum[lo][:, lo])
    return count == 0


# ---- storage ------------------------------------------------------------------------------


def write_masks(
    output: Path, count: int, mask_of: Callable[[int], np.ndarray], resolutions: list[int]
) -> dict:
    """Store the mask pyramid of images 0..count-1 (`mask_of(index)` at max_res) in
    `output/masks.lmdb`, keys as the images'; returns the observed share per resolution."""
    per_image = sum(math.ceil(r * r / 8) + 16 for r in resolutions)
    env = lmdb.open(str(output / MASKS_NAME), map_size=count * per_image * 2 + (16 << 20),
                    max_dbs=0, readahead=False, sync=False, metasync=False)
    observed = dict.fromkeys(resolutions, 0.0)
    try:
        for start in range(0, count, 1000):  # bounded transactions: memory stays flat
            with env.begin(write=True) as txn:
                for index in range(start, min(count, start + 1000)):
                    levels = mask_pyramid(mask_of(index), min(resolutions))
                    for r in resolutions:
                        txn.put(image_key(r, index), pack(levels[r]))
                        observed[r] += float(levels[r].mean())
        env.sync(True)
    finally:
        env.close()
    return {str(r): round(v / max(count, 1), 4) for r, v in observed.items()}


# ---- masks in the model's terms -----------------------------------------------------------


def fade_mask(mask: Tensor, alpha: float) -> Tensor:
    """The mask of a faded real image lerp(up(down(x)), x, alpha): while alpha < 1 a pixel is
    observed only when it and its low-resolution parent are, so the faded image depends on
    observed pixels only. Float (N, 1, res, res) in {0, 1}."""
    m = mask.float()
    if alpha >= 1.0:
        return m
    low = -torch.nn.functional.max_pool2d(-m, 2)  # min-pool: all four observed
    return m * torch.nn.functional.interpolate(low, scale_factor=2, mode="nearest")


def fill(x: Tensor, mask: Tensor, x_model: Tensor) -> Tensor:
    """Observed pixels of `x`, missing ones from `x_model` (detached): x*m + x_model*(1-m).

    `torch.where` rather than arithmetic, so a missing pixel's value (even inf or nan) never
    reaches the result or any gradient."""
    return torch.where(mask.bool(), x, x_model.detach().to(x.dtype))
