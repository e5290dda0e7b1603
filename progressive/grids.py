"""Image grids on disk: samples, and real images beside their reconstructions."""

from __future__ import annotations

import os

import torch
from torch import Tensor
from torchvision.utils import save_image

from progressive.files import atomic_write

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
