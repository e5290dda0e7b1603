"""Batch sizes from a memory budget: how many images one pass may take at a resolution.

The bytes one image costs are counted, not guessed: the pass runs on copies of the networks
on the meta device (nothing is allocated) with its input requiring a gradient, and every
tensor saved for backward is summed. That is what a gradient pass (Langevin, fitted codes,
inpainting's steps) holds, and an upper bound for a forward pass alone. Results are cached per
network, resolution and kind of pass.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable

import torch
from torch import Tensor

MEMORY = 2 * 2**30  # bytes the activations of one batch may take
MAX_BATCH = 64  # more images per pass gain nothing on a CPU and little on a GPU

_META: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COSTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _on_meta(net: torch.nn.Module) -> torch.nn.Module:
    if net not in _META:
        _META[net] = copy.deepcopy(net).to("meta")
    return _META[net]


def saved_bytes(fn: Callable[[Tensor], Tensor], example: Tensor) -> int:
    """Bytes per image that `fn` saves for backward on `example` (a meta batch of 2)."""
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    x = example.detach().requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return total // len(example)


def per_image(
    kind: str, res: int, alpha: float, *, generator: torch.nn.Module | None = None,
    energy: torch.nn.Module | None = None, inference: torch.nn.Module | None = None,
    latent: int = 0,
) -> int:
    """Bytes one image costs at `res`, for a pass of `kind`: "generate" (g(z)), "energy"
    (E(x)), "encode" (q(x)), "latent" (E(g(z)), a chain on z), "inpaint" (q, g and E), plus
    its float image and its gradient."""
    key_net = generator or energy or inference
    costs = _COSTS.setdefault(key_net, {})
    key = (kind, res, alpha)
    if key not in costs:
        g = _on_meta(generator) if generator is not None else None
        e = _on_meta(energy) if energy is not None else None
        q = _on_meta(inference) if inference is not None else None
        image = torch.zeros(2, 3, res, res, device="meta")
        z = torch.zeros(2, latent, device="meta")
        passes: dict[str, tuple[Callable[[Tensor], Tensor], Tensor]] = {
            "generate": (lambda v: g(v, res, alpha), z),
            "energy": (lambda v: e(v, alpha), image),
            "encode": (lambda v: q(v, alpha)[0], image),
            "latent": (lambda v: e(g(v, res, alpha), alpha), z),
            "inpaint": (lambda v: e(g(q(v, alpha)[0], res, alpha), alpha), image),
        }
        fn, example = passes[kind]
        costs[key] = saved_bytes(fn, example) + 2 * 4 * 3 * res * res
    return costs[key]


def batch_for(cost: int, budget: int | None = None, cap: int = MAX_BATCH) -> int:
    """Images per batch when each costs `cost` bytes: as many as `budget` (default MEMORY)
    holds, 1 to `cap`."""
    budget = MEMORY if budget is None else budget
    return max(1, min(cap, budget // max(1, cost)))


def image_batch(res: int, copies: int = 8, budget: int | None = None, cap: int = 256) -> int:
    """Images per chunk for work on the images alone (no network): `copies` float32 copies of
    each (pyramids, differences) within `budget` (default MEMORY)."""
    return batch_for(copies * 4 * 3 * res * res, budget, cap)
