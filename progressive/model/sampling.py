"""A trained run's networks applied in batches: generate and sample images, encode them, score
them by energy, reconstruct them.

Images are uint8 (N, 3, R, R) on the way in and float in [-1, 1] on the way out, on the CPU.
Real images pass through the same fade-in blend as in training, so the energy and inference
models see what they were trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from progressive.core.images import all_at_once, to_float
from progressive.model import budget
from progressive.model.langevin import Langevin, refine_batches
from progressive.model.layers import fade_real


def generate_batches(
    generator: torch.nn.Module, z: Tensor, res: int, alpha: float, batch: int | None = None
) -> Iterator[Tensor]:
    """Images g(z) batch by batch (float in [-1, 1], clamped, on the CPU), each batch sized
    by the memory budget (`budget`) unless given."""
    device = next(generator.parameters()).device
    if batch is None:
        cost = budget.per_image("generate", res, alpha, generator=generator, latent=z.shape[1])
        batch = budget.batch_for(cost)
    for i in range(0, len(z), batch):
        with torch.no_grad():
            yield generator(z[i : i + batch].to(device), res, alpha).float().clamp(-1, 1).cpu()


generate = all_at_once(
    generate_batches, "generate", "Images (N, 3, res, res), float in [-1, 1] (clamped), on the CPU."
)


def _batch(kind: str, net: torch.nn.Module, res: int, alpha: float, batch: int | None) -> int:
    """`batch`, or the budget's for a pass of `kind` through `net` at `res`."""
    if batch is not None:
        return batch
    return budget.batch_for(budget.per_image(kind, res, alpha, **{_ROLE[kind]: net}))


_ROLE = {"energy": "energy", "encode": "inference"}


LATENT_CHUNK = 4096  # latents drawn at a time from a sample's one seeded stream


def sample_batches(
    generator: torch.nn.Module,
    n: int,
    seed: int,
    latent: int,
    res: int,
    alpha: float,
    truncation: float = 1.0,
    *,
    energy: torch.nn.Module | None = None,
    chain: Langevin | None = None,
) -> Iterator[Tensor]:
    """`sample`, batch by batch, so any `n` streams in bounded memory: latents drawn
    LATENT_CHUNK at a time from one seeded stream, images in budget-sized batches."""
    stream = torch.Generator().manual_seed(seed)
    for first in range(0, n, LATENT_CHUNK):
        z = torch.randn(min(LATENT_CHUNK, n - first), latent, generator=stream) * truncation
        if chain is None or chain.steps == 0:
            yield from generate_batches(generator, z, res, alpha)
        else:
            yield from refine_batches(generator, energy, z, res, alpha, chain, seed=seed,
                                      first=first)


sample = all_at_once(
    sample_batches, "sample",
    """n images from z ~ N(0, I) (one seeded stream), pulled toward the mean latent 0 by
    `truncation` (z * psi), then refined by the Langevin `chain` on `energy` when given.""",
)


def prepare_real(images: Tensor, alpha: float) -> Tensor:
    """uint8 real images to the float input the energy and inference models saw in training."""
    return fade_real(to_float(images), alpha)


@torch.no_grad()
def encode(
    inference: torch.nn.Module, images: Tensor, alpha: float, batch: int | None = None
) -> Tensor:
    """Posterior means mu(x) of uint8 images: (N, latent), on the CPU."""
    device = next(inference.parameters()).device
    step = _batch("encode", inference, images.shape[-1], alpha, batch)
    return torch.cat([
        inference(prepare_real(images[i : i + step], alpha).to(device), alpha)[0].cpu()
        for i in range(0, len(images), step)
    ])


def energies(
    energy: torch.nn.Module, images: Tensor, alpha: float, batch: int | None = None
) -> Tensor:
    """Energy of each uint8 image (N,), on the CPU; low = data-like."""
    return _scores(energy, images, alpha, batch, lambda x: prepare_real(x, alpha))


def sample_energies(
    energy: torch.nn.Module, images: Tensor, alpha: float, batch: int | None = None
) -> Tensor:
    """Energy of each generated float image (N,), on the CPU: scored as the generator's output,
    the way training scores it (no real-image fade)."""
    return _scores(energy, images, alpha, batch, lambda x: x)


@torch.no_grad()
def _scores(
    energy: torch.nn.Module, images: Tensor, alpha: float, batch: int | None,
    prepare: Callable[[Tensor], Tensor],
) -> Tensor:
    """Energy (N,) of `prepare`d images, in budget-sized batches unless `batch` is given."""
    device = next(energy.parameters()).device
    step = _batch("energy", energy, images.shape[-1], alpha, batch)
    parts = [
        energy(prepare(images[i : i + step]).to(device), alpha).cpu()
        for i in range(0, len(images), step)
    ]
    return torch.cat(parts) if parts else torch.zeros(0)


def reconstruct(
    generator: torch.nn.Module, inference: torch.nn.Module, images: Tensor, res: int, alpha: float
) -> Tensor:
    """g(mu(x)) for uint8 images: float (N, 3, res, res) in [-1, 1]."""
    return generate(generator, encode(inference, images, alpha), res, alpha)
