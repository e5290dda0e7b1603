"""Image grids on disk: samples, and real images beside their reconstructions."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import save_image

GRID_PADDING = 2  # torchvision's default padding between grid cells


def temporary_path(path: Path) -> Path:
    """A sibling name to write to before renaming over `path`."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def save_grid(images: Tensor, path: str | os.PathLike, nrow: int) -> None:
    """A PNG (or any Pillow format) grid of float [-1, 1] images, `nrow` per row, written
    atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    save_image(images.float(), tmp, nrow=nrow, padding=GRID_PADDING, normalize=True,
               value_range=(-1, 1))
    os.replace(tmp, path)


def pairs(real: Tensor, recon: Tensor) -> Tensor:
    """Real images (float) interleaved with their reconstructions: real, recon, real, ..."""
    return torch.stack([real, recon.float()], 1).flatten(0, 1)
