"""Pictures on disk: image grids (samples; real images beside their reconstructions) and
animations, all written atomically."""

from __future__ import annotations

import os
from collections.abc import Iterable

import imageio.v2 as imageio
import numpy as np
import torch
from torch import Tensor
from torchvision.utils import save_image

from progressive.core.files import atomic_write
from progressive.core.images import to_uint8

GRID_PADDING = 2  # torchvision's default padding between grid cells


def save_grid(images: Tensor, path: str | os.PathLike, nrow: int) -> None:
    """A PNG (or any Pillow format) grid of float [-1, 1] images, `nrow` per row, written
    atomically."""
    with atomic_write(path) as tmp:
        save_image(images.float(), tmp, nrow=nrow, padding=GRID_PADDING, normalize=True,
                   value_range=(-1, 1))


def pairs(real: Tensor, recon: Tensor) -> Tensor:
    """Real images (float) interleaved with their reconstructions: real, recon, real, ..."""
    return torch.stack([real, recon.float()], 1).flatten(0, 1)


def to_frames(images: Tensor) -> np.ndarray:
    """float [-1, 1] (N, 3, H, W) -> uint8 (N, H, W, 3) for imageio."""
    return to_uint8(images).permute(0, 2, 3, 1).numpy()


GRID_SIDE = 4096  # pixels across a training grid at most: all 8x8 up to 512 px, 4x4 at 1024


def grid_side(grid: int, res: int) -> int:
    """Images per row and column of a training grid of `res` px images: `grid`, fewer where
    the grid would be wider than GRID_SIDE (a 1024 px grid of 8x8 is slow to draw and encode)."""
    return max(1, min(grid, GRID_SIDE // res))


GRID_PIXELS = 2**28  # pixels a grid image may hold (768 MiB as RGB)


def grid_capacity(res: int) -> int:
    """Images of `res` px one grid may hold."""
    return max(1, GRID_PIXELS // (res * res))


def save_animation(
    frames: np.ndarray | Iterable[np.ndarray], path: str | os.PathLike, fps: float
) -> None:
    """Frames (N, H, W, 3) uint8, or an iterable of such batches, as a .gif (looping) or .mp4
    (H.264 via imageio-ffmpeg), written frame by frame as they come."""
    batches = [frames] if isinstance(frames, np.ndarray) else frames
    with atomic_write(path) as tmp:
        if tmp.suffix.lower() == ".gif":
            writer = imageio.get_writer(tmp, format="GIF", duration=1000.0 / fps, loop=0)
        else:
            # macro_block_size=1: small frames are written as they are, not rescaled.
            writer = imageio.get_writer(
                tmp, format="FFMPEG", fps=fps, codec="libx264", macro_block_size=1
            )
        with writer:
            for batch in batches:
                for frame in batch:
                    writer.append_data(frame)
