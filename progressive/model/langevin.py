"""Short-run Langevin dynamics on the energy model: generator samples refined toward pi(x).

Two spaces, one update. With a potential U, step size s and temperature T, each step is

    v <- v - s * grad U(v) + sqrt(2 s T) * eps,    eps ~ N(0, I)

the Euler-Maruyama step of the Langevin diffusion whose stationary density is exp(-U / T).
T = 1 is that diffusion at the model's own temperature, T = 0 is plain gradient descent on U.

- image space: v = x, U(x) = E(x); the chain starts at g(z) and each step is clamped to the
  image range [-1, 1], where the energy model was trained.
- latent space: v = z, U(z) = E(g(z)) + |z|^2 / 2, the energy of p(z) exp(-E(g(z))): the
  generator's prior tilted by the energy model. The chain stays on the generator's manifold and
  the result is g(z_K).

Noise is drawn on the CPU from one seeded stream per batch, so a seed gives the same chain on
any device. Zero steps return the generator's samples unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from progressive.core.errors import UserError
from progressive.core.images import all_at_once
from progressive.model import budget

SPACES = ("image", "latent")

Potential = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Langevin:
    """Settings of a short-run chain: steps, step size s, temperature (noise) T, space."""

    # Defaults measured on the README's runs (bench/bench_langevin.py): image-space descent
    # moved SWD most in the good direction; noise and latent-space chains made it worse.
    steps: int = 0
    step_size: float = 5e-3
    noise: float = 0.0
    space: str = "image"

    def __post_init__(self):
        if self.steps < 0:
            raise UserError(f"--langevin-steps {self.steps}: give 0 or more steps")
        if not self.step_size > 0 or not math.isfinite(self.step_size):
            raise UserError(f"--langevin-step-size {self.step_size}: give a positive step size")
        if not self.noise >= 0 or not math.isfinite(self.noise):
            raise UserError(f"--langevin-noise {self.noise}: give a temperature of 0 or more")
        if self.space not in SPACES:
            raise UserError(f"--langevin-space {self.space!r}: choose one of {', '.join(SPACES)}")

    def as_dict(self) -> dict:
        """The settings as a JSON-ready dict (recorded beside refined metrics)."""
        return asdict(self)


def langevin(
    potential: Potential,
    start: Tensor,
    steps: int,
    step_size: float,
    noise: float,
    *,
    generator: torch.Generator | list[torch.Generator] | None = None,
    project: Callable[[Tensor], Tensor] | None = None,
    trace: list[Tensor] | None = None,
) -> Tensor:
    """`steps` Langevin steps on `potential` (per-sample values (N,)) from `start`.

    `generator`: the noise's stream, or one stream per sample (a chain then does not depend
    on which samples share its batch).
    `project` is applied after every step (e.g. a clamp); `trace`, when given, receives the
    potential of every sample before each step and after the last, on the CPU.
    Zero steps return `start` itself.
    """
    if steps == 0:
        return start
    scale = math.sqrt(2.0 * step_size * noise)
    v = start.detach().clone()
    for _ in range(steps):
        with torch.enable_grad():
            v.requires_grad_(True)
            u = potential(v)
            (grad,) = torch.autograd.grad(u.sum(), v)
        if trace is not None:
            trace.append(u.detach().float().cpu())
        v = v.detach() - step_size * grad
        if scale > 0:
            v = v + scale * _noise(v, generator).to(v.device, v.dtype)
        if project is not None:
            v = project(v)
    if trace is not None:
        with torch.no_grad():
            trace.append(potential(v).float().cpu())
    return v.detach()


def _noise(v: Tensor, generator: torch.Generator | list[torch.Generator] | None) -> Tensor:
    if isinstance(generator, list):
        return torch.stack([torch.randn(v.shape[1:], generator=g) for g in generator])
    return torch.randn(v.shape, generator=generator)


def image_potential(energy: torch.nn.Module, alpha: float) -> Potential:
    """U(x) = E(x) at the working alpha."""
    return lambda x: energy(x, alpha)


def latent_potential(
    generator: torch.nn.Module, energy: torch.nn.Module, res: int, alpha: float
) -> Potential:
    """U(z) = E(g(z)) + |z|^2 / 2: the energy of the prior tilted by the energy model."""
    return lambda z: energy(generator(z, res, alpha), alpha) + 0.5 * z.pow(2).sum(dim=1)


def _clamp_image(x: Tensor) -> Tensor:
    return x.clamp(-1.0, 1.0)


def refine_batches(
    generator: torch.nn.Module,
    energy: torch.nn.Module,
    z: Tensor,
    res: int,
    alpha: float,
    settings: Langevin,
    *,
    seed: int = 0,
    batch: int | None = None,
    first: int = 0,
) -> Iterator[Tensor]:
    """`refine`, batch by batch; batches sized by the memory budget unless given. The chains
    do not depend on the batch size: each image's noise is its own stream, named by its index
    (`first` + its place in `z`)."""
    device = next(generator.parameters()).device
    if batch is None:
        nets = dict(generator=generator, energy=energy, latent=z.shape[1])
        kinds = ("latent",) if settings.space == "latent" else ("generate", "energy")
        batch = budget.batch_for(max(budget.per_image(k, res, alpha, **nets) for k in kinds))
    for i in range(0, len(z), batch):
        zb = z[i : i + batch].to(device)
        # One noise stream per image, named by (seed, index): the same chains whatever the
        # device and the batch size.
        noise = [torch.Generator().manual_seed(seed * 1_000_003 + first + i + j)
                 for j in range(len(zb))]
        chain = dict(steps=settings.steps, step_size=settings.step_size, noise=settings.noise)
        if settings.space == "latent":
            potential = latent_potential(generator, energy, res, alpha)
            zb = langevin(potential, zb, generator=noise, **chain)
            with torch.no_grad():
                x = generator(zb, res, alpha).float().clamp(-1, 1)
        else:
            with torch.no_grad():
                x = generator(zb, res, alpha).float().clamp(-1, 1)
            x = langevin(
                image_potential(energy, alpha), x, generator=noise, project=_clamp_image, **chain
            )
        yield x.cpu()


refine = all_at_once(
    refine_batches, "refine",
    """Images g(z) refined by `settings`: float (N, 3, res, res) in [-1, 1], on the CPU.

    With zero steps the result is exactly the generator's clamped output for `z`.
    """,
)
