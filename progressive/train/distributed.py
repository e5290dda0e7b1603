"""What several processes need beyond DDP: batch statistics over the global batch, and
which process does what before the processes have met.

DDP averages gradients, which makes N processes optimise what one does only for terms that
are means over images. The terms that are statistics of the batch (the codes' marginal KL,
decorrelation, centring and MMD) are computed on the whole batch gathered from every rank,
with gradients flowing back to each rank's share: every rank then holds the same value, each
rank's codes receive N times their share of its gradient (the gather's backward sums over
ranks) and DDP's average divides that by N.
"""

from __future__ import annotations

import warnings
from datetime import timedelta

import torch
import torch.distributed as dist
from accelerate import InitProcessGroupKwargs
from accelerate.utils import get_int_from_env
from torch import Tensor
from torch.distributed.nn.functional import all_gather


def world_size() -> int:
    """Processes in the default group; 1 when there is none."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def process_group_kwargs(timeout_s: float) -> InitProcessGroupKwargs:
    """The process group's settings: how long a collective waits for the slowest rank before
    it fails. The main process works alone at stage ends (snapshot, grids, evaluation, the
    starting networks rebuilt for SWD at initialization, a PCA refit) and the first time it
    renders the built-in data, while the others wait in a barrier; NCCL's default of 10
    minutes can end a healthy run there."""
    return InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))


def launched_rank() -> int:
    """This process's global rank as its launcher set it (torchrun, MPI), readable before any
    process group exists; 0 when it was not launched as one of several."""
    return get_int_from_env(["RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"], 0)


def gather_batch(*tensors: Tensor) -> tuple[Tensor, ...] | None:
    """Each tensor concatenated over ranks (in rank order) along the batch, differentiable
    with respect to this rank's share; None in a single process (use the tensors as they are)."""
    if world_size() == 1:
        return None

    with warnings.catch_warnings():  # its successor is private; this one works on gloo too
        warnings.simplefilter("ignore", FutureWarning)
        return tuple(torch.cat(all_gather(t.contiguous())) for t in tensors)


def fixed_buffers(module: torch.nn.Module) -> list[str]:
    """Names of the buffers of `module` that never change once set: the principal-component
    path's (fitted, or loaded, before the first step)."""
    return [name for name, _ in module.named_buffers() if "pca" in name.split(".")]


def skip_fixed_buffers(module: torch.nn.Module) -> None:
    """Tell DDP (before it wraps `module`) not to broadcast the fixed buffers at every step:
    tens of MB at 64 px for values that `broadcast_fixed_buffers` sends once."""
    module._ddp_params_and_buffers_to_ignore = fixed_buffers(module)


def broadcast_fixed_buffers(networks: dict[str, torch.nn.Module]) -> None:
    """The fixed buffers of every network copied from the main process to the others, once
    after they are set (every rank fits the same components, up to floating-point order)."""
    if world_size() == 1:
        return
    for net in networks.values():
        buffers = dict(net.named_buffers())
        for name in fixed_buffers(net):
            dist.broadcast(buffers[name], src=0)
