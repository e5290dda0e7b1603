"""Optimizer steps under fp16's loss scaler: each optimizer unscaled once, the scale updated
once per training step.

accelerate's optimizer wrapper updates the scaler inside every `step()`, which clears every
optimizer's record of having been unscaled: with several optimizers after one backward pass,
the later ones are unscaled a second time and one overflow lowers the scale once per optimizer.
PyTorch's recipe for several optimizers is `scaler.step` for each, then one `scaler.update`.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer


def step(accelerator: Accelerator, optimizer: torch.optim.Optimizer) -> None:
    """Step `optimizer`; under a loss scaler, skipped on non-finite gradients and unscaled
    only if nobody has unscaled it yet, the scale left for `update_scale`."""
    scaler = accelerator.scaler
    if scaler is None:
        optimizer.step()
        return
    while isinstance(optimizer, AcceleratedOptimizer):
        optimizer = optimizer.optimizer
    scaler.step(optimizer)


def update_scale(accelerator: Accelerator) -> None:
    """Update the loss scale once, from every optimizer stepped since the last update."""
    if accelerator.scaler is not None:
        accelerator.scaler.update()
