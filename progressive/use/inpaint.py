"""Filling missing pixels with a trained run, and scoring the filling.

Completion: the inference model encodes the image with its missing pixels set to the model's
own fill (EM-style, as in training), the generator decodes; optionally steps on z fit the
visible pixels under the N(0, I) prior; the fill is then blended into the visible pixels (its
error on them, interpolated harmonically into the holes, is added: Poisson blending), and
optionally steps on the missing pixels lower the energy. Visible pixels are always copied from
the input, bit for bit.

Recovery error: mean absolute error over the missing pixels on a [0, 1] scale, and the PSNR of
those pixels, with the mean-colour fill (each image's own mean visible colour) as baseline.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from progressive.core.errors import UserError
from progressive.core.images import to_float, to_uint8
from progressive.data import masks as mk
from progressive.model import budget
from progressive.model.layers import fade_real
from progressive.run.loading import LoadedRun


@dataclass
class Completion:
    """How `complete` fills: EM rounds of encode-fill, z steps, the blend into the visible
    pixels, energy steps."""

    em_rounds: int = 2
    z_steps: int = 20
    z_lr: float = 0.05
    energy_steps: int = 0
    energy_lr: float = 0.01
    blend: bool = True
    batch: int | None = None  # images per pass; default from the memory budget


def complete(
    run: LoadedRun, images: Tensor, masks: Tensor, how: Completion | None = None
) -> Tensor:
    """uint8 images (N, 3, R, R) with masks (N, 1, R, R), 1 = observed, at the run's
    resolution: uint8 completions whose observed pixels are the input's, bit for bit."""
    how = how or Completion()
    step = how.batch or budget.batch_for(budget.per_image(
        "inpaint", run.res, run.alpha, generator=run.generator, energy=run.energy,
        inference=run.inference, latent=run.latent,
    ))
    out = []
    for i in range(0, len(images), step):
        model = _model_fill(run, images[i : i + step], masks[i : i + step], how)
        out.append(to_uint8(model.cpu()))
    filled = torch.cat(out) if out else images.clone()
    return torch.where(masks.bool(), images, filled)


def _model_fill(run: LoadedRun, images: Tensor, masks: Tensor, how: Completion) -> Tensor:
    """The model's image (float, [-1, 1]) for one batch; only its missing pixels are used."""
    g, inference, energy = run.generator, run.inference, run.energy
    res, alpha, dev = run.res, run.alpha, run.device
    x = fade_real(to_float(images.to(dev)), alpha)
    m = mk.fade_mask(masks.to(dev), alpha)
    fill = torch.zeros_like(x)
    with torch.no_grad():
        for _ in range(max(1, how.em_rounds)):
            mu, _ = inference(mk.fill(x, m, fill), alpha)
            fill = g(mu, res, alpha).float().clamp(-1, 1)
    if how.z_steps:
        z = mu.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=how.z_lr)
        for _ in range(how.z_steps):
            diff = torch.where(m.bool(), x - g(z, res, alpha).float(), torch.zeros((), device=dev))
            # Gaussian likelihood of the visible pixels with the N(0, I) prior on z
            loss = (diff.square().flatten(1).sum(1) + 0.5 * z.square().sum(1)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            fill = g(z, res, alpha).float().clamp(-1, 1)
    if how.blend:
        # the model's error on the visible pixels is mostly smooth (colour, light), so its
        # harmonic interpolation carries it into the holes: the fill meets the visible pixels
        # without a seam and keeps the model's detail (Poisson blending)
        fill = (fill + laplace_fill(x - fill, m)).clamp(-1, 1)
    if how.energy_steps:
        hole = (1 - m).detach()
        y = mk.fill(x, m, fill).detach().requires_grad_(True)
        for _ in range(how.energy_steps):
            (grad,) = torch.autograd.grad(energy(y, alpha).sum(), y)
            with torch.no_grad():
                y -= how.energy_lr * grad * hole
                y.clamp_(-1, 1)
        fill = y.detach()
    return fill


def laplace_fill(values: Tensor, observed: Tensor, tol: float = 1e-5) -> Tensor:
    """`values` (N, C, H, W) kept where `observed` (N, 1, H, W) is 1 and harmonic where it is
    0: each missing pixel the mean of its neighbours inside the image (the discrete Laplace
    equation with the visible pixels as boundary). An image with nothing observed gets zeros.

    An image whose holes lie in a small part of it is solved alone on the box around them (one
    pixel of margin holds every neighbour a missing pixel has): a hole in a large image costs
    what its box does. The others (holes spread over the image) are solved together."""
    known = observed.float().expand_as(values)
    values = mk.fill(values.float(), observed, torch.zeros_like(known))  # no missing value enters
    out = values.clone()
    h, w = values.shape[2:]
    spread = []
    for i in range(len(values)):
        holes = (observed[i, 0] == 0).nonzero()
        if len(holes) in (0, h * w):  # nothing missing, or nothing to interpolate from
            continue
        (top, left), (bottom, right) = holes.min(0).values.tolist(), holes.max(0).values.tolist()
        rows = slice(max(top - 1, 0), min(bottom + 2, h))
        cols = slice(max(left - 1, 0), min(right + 2, w))
        if (rows.stop - rows.start) * (cols.stop - cols.start) > h * w // 2:
            spread.append(i)
            continue
        box = (slice(i, i + 1), slice(None), rows, cols)
        out[box] = solve_harmonic(values[box], 1 - known[box], tol)
    if spread:
        out[spread] = solve_harmonic(values[spread], 1 - known[spread], tol)
    return out


def solve_harmonic(values: Tensor, hole: Tensor, tol: float = 1e-5) -> Tensor:
    """`values` (zero where `hole` is 1) with the hole pixels harmonic, by conjugate gradients
    over the whole frame; a missing pixel on the frame's edge is an edge of the image."""
    cross = torch.tensor([[0.0, 1, 0], [1, 0, 1], [0, 1, 0]], device=values.device)
    cross = cross.view(1, 1, 3, 3).expand(values.shape[1], 1, 3, 3)

    def neighbours(v: Tensor) -> Tensor:
        return F.conv2d(v, cross, padding=1, groups=v.shape[1])

    degree = neighbours(torch.ones_like(values))
    b = hole * neighbours(values)
    v, r = torch.zeros_like(values), b.clone()
    p, rr = r.clone(), r.square().sum((2, 3), keepdim=True)
    stop = tol**2 * rr.clamp(min=1e-30)
    for _ in range(4 * max(values.shape[2:]) + 20):
        if bool((rr <= stop).all()):
            break
        ap = hole * (degree * p - neighbours(p * hole))
        pap = (p * ap).sum((2, 3), keepdim=True)
        step = torch.where(pap > 0, rr / pap.clamp(min=1e-30), torch.zeros_like(pap))
        v, r = v + step * p, r - step * ap
        rr_next = r.square().sum((2, 3), keepdim=True)
        p = r + torch.where(rr > 0, rr_next / rr.clamp(min=1e-30), torch.zeros_like(rr)) * p
        rr = rr_next
    return torch.where(hole.bool(), v, values)


# ---- masks for given images ---------------------------------------------------------------


def occlusion_masks(kind: str, seed: int, count: int, max_res: int, res: int) -> Tensor:
    """Masks `kind` of images 0..count-1 made at `max_res` (as a dataset would store them) and
    taken to `res`: uint8 (count, 1, res, res)."""
    mk.check_kind(kind)
    out = [mk.mask_pyramid(mk.make_mask(kind, seed, i, max_res))[res] for i in range(count)]
    return torch.from_numpy(np.stack(out)[:, None].astype(np.uint8))


def file_masks(
    masks_dir: str | os.PathLike, images_dir: str | os.PathLike, names: list[str],
    max_res: int, res: int,
) -> Tensor:
    """Masks from PNGs named as the images (relative paths, any extension), uint8
    (N, 1, res, res); an image without a mask file is a one-line error."""
    masks_dir, images_dir = Path(masks_dir), Path(images_dir)
    out = []
    for name in names:
        stem = Path(name).with_suffix("")
        found = sorted(masks_dir.glob(f"{stem}.*"))
        if not found:
            raise UserError(f"--masks {masks_dir} has no mask named {stem}.* for image {name}")
        with Image.open(images_dir / name) as img:
            size = img.size
        m = mk.load_mask_file(found[0], size, max_res)
        out.append(mk.mask_pyramid(m)[res])
    return torch.from_numpy(np.stack(out)[:, None].astype(np.uint8))


# ---- scores -------------------------------------------------------------------------------


def harmonic_fill(images: Tensor, masks: Tensor) -> Tensor:
    """The classical harmonic (Laplace) inpainting of each image's missing pixels (uint8)."""
    filled = to_uint8(laplace_fill(to_float(images), masks).clamp(-1, 1))
    return torch.where(masks.bool(), images, filled)


def mean_colour_fill(images: Tensor, masks: Tensor) -> Tensor:
    """Each image's missing pixels set to the mean colour of its visible ones (uint8)."""
    m = masks.float()
    mean = (images.float() * m).sum((2, 3), keepdim=True) / m.sum((2, 3), keepdim=True).clamp(min=1)
    return torch.where(masks.bool(), images, mean.round().to(torch.uint8).expand_as(images))


def recovery_error(completed: Tensor, original: Tensor, masks: Tensor) -> dict[str, float]:
    """MAE over the missing pixels (all channels) on [0, 1], and their PSNR in dB."""
    hole = (~masks.bool()).expand_as(original)
    n = int(hole.sum())
    if n == 0:
        raise UserError("the masks leave no pixel missing; nothing to recover")
    diff = (completed.float() - original.float())[hole] / 255.0
    mse = float(diff.square().mean())
    return {"mae": float(diff.abs().mean()), "psnr": 10 * math.log10(1.0 / max(mse, 1e-12)),
            "missing_share": n / original.numel()}


def occluded_view(images: Tensor, masks: Tensor) -> Tensor:
    """Images with their missing pixels mid-grey, float [-1, 1], for grids."""
    return torch.where(masks.bool(), to_float(images), torch.zeros(()))
