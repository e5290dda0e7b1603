"""Images no image dataset holds: uniform noise drawn at a random scale and enlarged
bilinearly, from one flat colour (scale 1) to independent pixels (scale = resolution).

An energy trained only against the generator's samples is shaped only where the generator
puts mass; far from the data it can rate a flat grey image or smooth noise as more data-like
than the data. `--energy-outliers` ranks the data below these images during training, and
`progressive evaluate --ood noise:KIND` measures whether an energy does."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from progressive.core.images import to_uint8

# The evaluation's sets, each a range of the scales training draws from.
KINDS = ("flat", "smooth", "pixel")


def scales(res: int, kind: str | None = None) -> list[int]:
    """The noise's sizes at resolution `res`: powers of two from 1 to `res` (all of them by
    default; `flat` 1, `smooth` 2 to res/4, `pixel` res)."""
    every = [2**k for k in range(res.bit_length()) if 2**k <= res]
    if kind is None:
        return every
    if kind == "flat":
        return [1]
    if kind == "pixel":
        return [res]
    if kind == "smooth":
        return [s for s in every if 2 <= s <= max(res // 4, 2)]
    raise ValueError(f"unknown noise kind {kind!r}; one of {', '.join(KINDS)}")


def random_scale_noise(
    n: int, res: int, generator: torch.Generator, sizes: list[int] | None = None
) -> Tensor:
    """`n` RGB images (float, [-1, 1], on the generator's device): per image, uniform noise
    of a size drawn from `sizes` (default: every power of two up to `res`) enlarged bilinearly
    to `res`. Draws only from `generator`, so a seeded stream repeats them."""
    sizes = sizes or scales(res)
    device = generator.device
    pick = torch.randint(len(sizes), (n, 1, 1, 1), generator=generator, device=device)
    out = torch.zeros(n, 3, res, res, device=device)
    for i, size in enumerate(sizes):  # every size for every image: no host sync on a GPU
        noise = torch.rand(n, 3, size, size, generator=generator, device=device) * 2 - 1
        if size != res:
            noise = F.interpolate(noise, size=(res, res), mode="bilinear", align_corners=False)
        out = torch.where(pick == i, noise, out)
    return out


def noise_set(kind: str, n: int, res: int, seed: int) -> Tensor:
    """The evaluation's set `noise:KIND` as uint8 (N, 3, res, res), from a CPU stream seeded
    with `seed`."""
    gen = torch.Generator().manual_seed(seed)
    return to_uint8(random_scale_noise(n, res, gen, scales(res, kind)))
