"""Image metrics in pixel space: sliced Wasserstein distance, reconstruction error, diversity.
FID and KID, on Inception features, are in `progressive.metrics.inception`.

Conventions
- Image sets are (N, 3, H, W) tensors, either uint8 in [0, 255] or float in [-1, 1] (the
  generator's range). Float images are mapped to [0, 255] and rounded, so generated images are
  measured exactly as they would be saved.
- Sliced Wasserstein distance (SWD) follows progressive-GAN (Karras et al. 2018, appendix D):
  a Laplacian pyramid down to 16x16, 128 random 7x7x3 neighbourhoods per image and level,
  descriptors normalised per channel *within each set* (as progressive-GAN did), then 4 repeats
  of 128 random unit directions; each projection is sorted and the mean absolute difference of
  the two sorted projections is the 1-D Wasserstein-1 distance. Reported x1e3 like the paper.
- Reconstruction error is the mean squared error per image in the [-1, 1] range.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from progressive.core.images import to_float, to_uint8
from progressive.model.budget import image_batch

SWD_MIN_RES = 16
SWD_PATCH = 7
SWD_PATCHES_PER_IMAGE = 128
SWD_DIR_REPEATS = 4
SWD_DIRS_PER_REPEAT = 128


# --------------------------------------------------------------------------- SWD


_BINOMIAL = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)


def _blur(x: Tensor) -> Tensor:
    """5x5 binomial blur, done as two 1-D passes of shifted sums (a depthwise convolution is
    several times slower on a CPU); mirror padding (as progressive-GAN's scipy mirror mode) so
    edges are not darkened."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (2, 2, 0, 0), mode="reflect")
    x = sum(k * padded[..., i : i + w] for i, k in enumerate(_BINOMIAL))
    padded = F.pad(x, (0, 0, 2, 2), mode="reflect")
    return sum(k * padded[..., i : i + h, :] for i, k in enumerate(_BINOMIAL))


def _pyr_down(x: Tensor) -> Tensor:
    return _blur(x)[:, :, ::2, ::2]


def _pyr_up(x: Tensor) -> Tensor:
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = x
    return _blur(up) * 4  # the zeros carry no energy: x4 restores the mean


def laplacian_pyramid(images: Tensor, levels: int) -> list[Tensor]:
    """Laplacian pyramid of float images (N, C, H, W): `levels` tensors, finest first.

    Each level is the Gaussian level minus the upsampled next coarser one; the last level is
    the coarsest Gaussian level itself.
    """
    pyramid = []
    current = images
    for _ in range(levels - 1):
        lower = _pyr_down(current)
        pyramid.append(current - _pyr_up(lower))
        current = lower
    pyramid.append(current)
    return pyramid


def swd_levels(res: int) -> list[int]:
    """The resolutions of the SWD pyramid for images of size `res`: res, res/2, ..., 16."""
    if res < SWD_MIN_RES:
        raise ValueError(f"SWD needs images of at least {SWD_MIN_RES}x{SWD_MIN_RES}, got {res}")
    levels = []
    while res >= SWD_MIN_RES:
        levels.append(res)
        res //= 2
    return levels


def _patches(
    level: Tensor, count: int, size: int, gen_y: torch.Generator, gen_x: torch.Generator
) -> Tensor:
    """`count` random size x size neighbourhoods per image, flattened: (N * count, C*size*size)."""
    n, c, h, w = level.shape
    ys = torch.randint(0, h - size + 1, (n, count, 1, 1, 1), generator=gen_y)
    xs = torch.randint(0, w - size + 1, (n, count, 1, 1, 1), generator=gen_x)
    off = torch.arange(size)
    image = torch.arange(n).view(n, 1, 1, 1, 1)
    chan = torch.arange(c).view(1, 1, c, 1, 1)
    rows = ys + off.view(1, 1, 1, size, 1)
    cols = xs + off.view(1, 1, 1, 1, size)
    flat = ((image * c + chan) * h + rows) * w + cols  # one index tensor: cheap gather
    return level.reshape(-1)[flat].reshape(n * count, c * size * size)


def patch_descriptors(
    images: Tensor | Iterable[Tensor],
    *,
    seed: int = 0,
    patches_per_image: int = SWD_PATCHES_PER_IMAGE,
    patch_size: int = SWD_PATCH,
    batch: int | None = None,
) -> dict[int, Tensor]:
    """Normalised neighbourhood descriptors per pyramid level, finest first.

    `images` is one (N, 3, H, W) tensor or an iterable of such batches (uint8 or float in
    [-1, 1]). Returns `{level_res: (N * patches_per_image, 3 * patch_size**2) float32}`, each
    normalised per channel over the whole set (mean 0, std 1).
    """
    batches = [images] if isinstance(images, Tensor) else images
    # One stream per level and axis, so positions do not depend on how images are batched.
    gens: list[tuple[torch.Generator, torch.Generator]] = []
    per_level: list[list[Tensor]] | None = None
    levels: list[int] = []
    for big in batches:
        step = batch or image_batch(big.shape[-1])
        for start in range(0, len(big), step):
            x = to_uint8(big[start : start + step]).float()
            if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
                raise ValueError(f"expected square (N, 3, H, W) images, got {tuple(x.shape)}")
            if per_level is None:
                levels = swd_levels(x.shape[-1])
                per_level = [[] for _ in levels]
                gens = [
                    tuple(
                        torch.Generator().manual_seed(seed * 1000 + 2 * i + axis) for axis in (0, 1)
                    )
                    for i in range(len(levels))
                ]
            elif x.shape[-1] != levels[0]:
                raise ValueError("all images of a set must have the same resolution")
            pyramid = laplacian_pyramid(x, len(levels))
            for out, level, (gen_y, gen_x) in zip(per_level, pyramid, gens, strict=True):
                out.append(_patches(level, patches_per_image, patch_size, gen_y, gen_x))
    if per_level is None:
        raise ValueError("SWD needs at least one image")
    result = {}
    for res, parts in zip(levels, per_level, strict=True):
        desc = torch.cat(parts)
        by_channel = desc.view(desc.shape[0], 3, -1)
        mean = by_channel.mean(dim=(0, 2), keepdim=True)
        std = by_channel.std(dim=(0, 2), keepdim=True).clamp_min(1e-8)
        result[res] = ((by_channel - mean) / std).view(desc.shape[0], -1)
    return result


def random_directions(
    dim: int, repeats: int, per_repeat: int, generator: torch.Generator
) -> Tensor:
    """Random unit directions (repeats, dim, per_repeat), each column of norm 1."""
    dirs = torch.randn(repeats, dim, per_repeat, generator=generator)
    return dirs / dirs.norm(dim=1, keepdim=True)


def sliced_wasserstein_descriptors(a: Tensor, b: Tensor, directions: Tensor) -> float:
    """Sliced Wasserstein-1 distance between two equal-size point sets (M, D).

    For every direction (columns of `directions` (R, D, K)) both sets are projected and sorted;
    the mean absolute difference of the sorted projections is the exact 1-D Wasserstein-1
    distance between the two empirical distributions. Returns the mean over all R*K directions.
    """
    if a.shape != b.shape:
        raise ValueError(f"SWD needs equal-size sets, got {tuple(a.shape)} and {tuple(b.shape)}")
    a_t, b_t = a.T.contiguous(), b.T.contiguous()
    dists = []
    for dirs in directions:
        # Rows are directions so each sort runs over contiguous memory; numpy's SIMD sort is
        # several times faster than torch.sort on CPU.
        pa = np.sort((dirs.T @ a_t).numpy(), axis=1)
        pb = np.sort((dirs.T @ b_t).numpy(), axis=1)
        dists.append(float(np.abs(pa - pb).mean()))
    return float(np.mean(dists))


def sliced_wasserstein(
    real: Tensor | Iterable[Tensor],
    fake: Tensor | Iterable[Tensor],
    *,
    seed: int = 0,
    dir_repeats: int = SWD_DIR_REPEATS,
    dirs_per_repeat: int = SWD_DIRS_PER_REPEAT,
    patches_per_image: int = SWD_PATCHES_PER_IMAGE,
) -> dict:
    """Progressive-GAN's multi-scale SWD between two equal-size image sets (see module doc).

    Returns `{"levels": [res, ...], "swd": [per level x1e3, ...], "mean": float}`, finest level
    first. Deterministic for a given `seed`; patch positions of the two sets are drawn from
    independent streams, so a set compared with itself gives a small positive number.
    """
    desc_real = patch_descriptors(real, seed=2 * seed, patches_per_image=patches_per_image)
    desc_fake = patch_descriptors(fake, seed=2 * seed + 1, patches_per_image=patches_per_image)
    return swd_of_descriptors(desc_real, desc_fake, seed=seed, dir_repeats=dir_repeats,
                              dirs_per_repeat=dirs_per_repeat)


def swd_of_descriptors(
    desc_real: dict[int, Tensor], desc_fake: dict[int, Tensor], *, seed: int = 0,
    dir_repeats: int = SWD_DIR_REPEATS, dirs_per_repeat: int = SWD_DIRS_PER_REPEAT,
) -> dict:
    """`sliced_wasserstein` from the two sets' `patch_descriptors` (the real set's drawn with
    seed 2 * seed, the other's with 2 * seed + 1), so one set's can serve several comparisons."""
    if list(desc_real) != list(desc_fake):
        raise ValueError("SWD needs two image sets of the same resolution")
    generator = torch.Generator().manual_seed(seed)
    swd = []
    for res in desc_real:
        a, b = desc_real[res], desc_fake[res]
        dirs = random_directions(a.shape[1], dir_repeats, dirs_per_repeat, generator)
        swd.append(sliced_wasserstein_descriptors(a, b, dirs) * 1e3)
    return {"levels": list(desc_real), "swd": swd, "mean": float(np.mean(swd))}


# --------------------------------------------------------------------------- reconstruction


def reconstruction_error(real: Tensor, recon: Tensor) -> Tensor:
    """Mean squared error per image (N,), both sets mapped to [-1, 1] first."""
    real_f, recon_f = to_float(real), to_float(recon)
    if real_f.shape != recon_f.shape:
        raise ValueError(f"shapes differ: {tuple(real_f.shape)} vs {tuple(recon_f.shape)}")
    return (real_f - recon_f).pow(2).flatten(1).mean(dim=1)


def mean_image_baseline(train: Tensor, heldout: Tensor) -> Tensor:
    """MSE per held-out image of predicting it by the mean training image (the floor to beat);
    `train` may be the mean image itself (1, 3, R, R)."""
    mean = to_float(train).mean(dim=0, keepdim=True)
    return reconstruction_error(heldout, mean.expand_as(to_float(heldout)))


# --------------------------------------------------------------------------- diversity

DIVERSITY_RES = 32


def nearest_neighbour_distances(images: Tensor, res: int = DIVERSITY_RES) -> Tensor:
    """Per image (N,), the RMS pixel distance ([-1, 1] range) to its nearest other image of the
    set, after box-averaging down to at most `res` (coarse structure, not pixel noise)."""
    x = to_float(images)
    while x.shape[-1] > res:
        x = F.avg_pool2d(x, 2)
    flat = x.flatten(1).double()
    d = torch.cdist(flat, flat).pow(2) / flat.shape[1]
    d.fill_diagonal_(float("inf"))
    return d.min(dim=1).values.sqrt().float()


def diversity(fake: Tensor, real: Tensor) -> dict:
    """Mean nearest-neighbour distance among generated images over the same among as many real
    images: 1 is as diverse as the data, near 0 near-copies of a few templates."""
    nn_fake = nearest_neighbour_distances(fake).mean().item()
    nn_real = nearest_neighbour_distances(real).mean().item()
    return {"value": nn_fake / nn_real, "samples": nn_fake, "real": nn_real}
