"""Latent maths: seeded latents, linear and spherical walks, smoothed random paths."""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import torch
from torch import Tensor

from progressive.core.errors import UserError


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


def marginal_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(m, diag(v)) || N(0, I)), summed over latent dimensions, for the batch's aggregate
    posterior q(z) = mean over x of q(z|x): m the batch mean of mu, v the batch variance of mu
    plus the mean posterior variance.

    The per-image KL, averaged over dimensions as the reference code does, barely constrains
    where the codes of a whole dataset sit: they can drift off the prior together, leaving the
    generator's prior samples in a region that reconstruction never trains. This term holds the
    codes' mean and spread at the prior's."""
    dtype = torch.promote_types(mu.dtype, torch.float32)  # fp32 at least; float64 stays
    mu, logvar = mu.to(dtype), logvar.to(dtype)
    m = mu.mean(0)
    v = (mu.var(0) if mu.shape[0] > 1 else torch.zeros_like(m)) + logvar.exp().mean(0)
    return 0.5 * (m.square() + v - 1.0 - v.log()).sum()
