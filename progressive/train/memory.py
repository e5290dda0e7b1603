"""Peak memory of training steps, estimated without allocating anything: the real
`Trainer.create` and `Trainer.step` replayed on fake tensors (shapes, dtypes and strides only),
every tensor storage counted from the operation that creates it until it is freed.

So the estimate holds whatever the step holds: the reconstruction and sampling passes kept for
the joint backward, the energy's pass on real, generated and outlier images (and Langevin
chains, R1's double backward, where configured), the frozen energy pass on generated images,
the networks and their averages, gradients, Adam's moments and the temporaries of each backward
pass, in the dtype autocast gives each tensor. It leaves out what no tensor operation shows:
the allocator's rounding and caching, convolution workspaces (cuDNN's algorithm search on a
GPU), the data loader, and fill-in passes for incomplete data. Autocast follows the CPU's
rules, Adam the per-parameter update (the fused GPU update makes no temporaries).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable

import torch
from accelerate.utils import convert_outputs_to_fp32
from torch._subclasses.fake_tensor import FakeCopyMode, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from progressive.config.schedule import NETWORKS, Phase
from progressive.config.sections import Config
from progressive.model.networks import OPTIONAL_AVERAGES, initial_networks
from progressive.train.trainer import GeneratorInference, Trainer

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

COVERS = (
    "estimate, replayed on fake tensors: networks, their averages, gradients, Adam moments, "
    "every activation each forward pass keeps for backward (reconstruction and sampling "
    "passes, the energy on real, generated and outlier images, the frozen energy pass) and the "
    "temporaries of each backward pass, in the dtypes autocast gives them; not included: the "
    "allocator's caching and rounding, convolution workspaces (cuDNN), the data loader"
)


class _LiveBytes(TorchDispatchMode):
    """Bytes of every tensor storage created under this mode that is still alive; the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[int, int] = {}
        self.now = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self.now -= self.sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # Fake tensors hold no values: where the step reads one (torch.cov's warning check, a
        # seed drawn for Langevin noise), it gets a zero of its type, which moves no memory.
        if func is torch.ops.aten.equal.default:
            return False
        if func is torch.ops.aten._local_scalar_dense.default:
            dtype = args[0].dtype
            return False if dtype == torch.bool else 0.0 if dtype.is_floating_point else 0
        out = func(*args, **(kwargs or {}))
        self.track(t for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out

    def track(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count these tensors' storages from now until they are freed (once each)."""
        for t in tensors:
            storage = t.untyped_storage()
            key = id(storage)
            if key in self.sizes:
                continue
            self.sizes[key] = storage.nbytes()
            self.now += self.sizes[key]
            self.peak = max(self.peak, self.now)
            weakref.finalize(storage, self._release, key)

    def reset_peak(self) -> None:
        self.peak = self.now


class _AdamModel(torch.optim.Optimizer):
    """Adam's memory without its arithmetic on step counts (which reads tensor values): two
    moments per parameter, created at its first update, and the per-parameter temporaries of
    PyTorch's CPU update."""

    def __init__(self, params, lr: float, betas: tuple[float, float], weight_decay: float):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": 1e-8,
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            (b1, b2), wd = group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                grad = p.grad.add(p, alpha=wd) if wd else p.grad
                state["exp_avg"].lerp_(grad, 1 - b1)
                state["exp_avg_sq"].mul_(b2).addcmul_(grad, grad, value=1 - b2)
                denom = state["exp_avg_sq"].sqrt().add_(group["eps"])
                p.addcdiv_(state["exp_avg"], denom, value=-group["lr"])


class _Accelerator:
    """What `Trainer` asks of accelerate's Accelerator, for one process on the CPU: autocast in
    the run's precision, and prepared modules whose forward runs under autocast and returns
    fp32 (as accelerate prepares them)."""

    scaler = None  # no loss scaler: fp16's scaling changes no tensor's size

    def __init__(self, mixed_precision: str):
        self.device = torch.device("cpu")
        self.mixed_precision = mixed_precision
        self.process_index, self.num_processes = 0, 1
        self.dtype = AUTOCAST_DTYPES.get(mixed_precision)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=self.dtype)

    def prepare(self, *objects):
        for module in objects:
            if self.dtype is not None:
                module.forward = convert_outputs_to_fp32(
                    torch.autocast("cpu", dtype=self.dtype)(module.forward)
                )
        return objects

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def unwrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def unscale_gradients(self, optimizer=None) -> None:
        pass

    def reduce(self, tensor: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return tensor


def _trainer(cfg: Config, mixed_precision: str):
    """A `Trainer` built as `Trainer.create` builds one, on the fake device: the networks at
    full size (averages copied within the fake mode), Adam per network, modules prepared."""
    acc = _Accelerator(mixed_precision)
    with FakeCopyMode(torch._guards.detect_fake_mode()):
        nets = initial_networks(cfg)
    opts = {}
    for name in NETWORKS:
        wd = cfg.optim.weight_decay_generator if name == "generator" else 0.0
        betas = cfg.optim.betas_of(name)
        opts[name] = _AdamModel(nets[name].parameters(), 0.0, betas, wd)
    pair, energy = acc.prepare(GeneratorInference(nets["generator"], nets["inference"]),
                               nets["energy"])
    averages = {n: nets[n] for n in OPTIONAL_AVERAGES if n in nets}
    return Trainer(cfg, acc, pair, energy, nets["generator_ema"], opts, averages)


def _bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def step_peaks(
    cfg: Config, steps: list[tuple[int, int, float]], mixed_precision: str
) -> list[dict[str, int]]:
    """Peak bytes of each training step in `steps` (res, batch, alpha), run in order on one
    trainer (so Adam state builds up as in a run), under accelerate's `mixed_precision`
    ("no", "bf16" or "fp16"). Each peak comes with what was held for certain after the step:
    weights, averages, Adam moments, gradients; the rest of the peak is activations and
    temporaries."""
    lr = {n: 0.0 for n in NETWORKS}
    out = []
    with torch.random.fork_rng(), FakeTensorMode(), _LiveBytes() as live:
        trainer = _trainer(cfg, mixed_precision)
        nets = trainer.unwrapped()
        for net in nets.values():  # the averages' copies were made outside the dispatch
            live.track([*net.parameters(), *net.buffers()])
        trained = [p for n in NETWORKS for p in nets[n].parameters()]
        others = [t for n, m in nets.items() if n not in NETWORKS for t in m.parameters()]
        buffers = [b for m in nets.values() for b in m.buffers()]
        for res, batch, alpha in steps:
            live.reset_peak()
            phase = Phase(0, res, alpha, alpha < 1.0, batch, lr, 0, None)
            real = torch.zeros(batch, 3, res, res, dtype=torch.uint8)
            trainer.step(real, phase, 0)
            del real
            moments = [t for o in trainer.optimizers.values() for s in o.state.values()
                       for t in s.values()]
            out.append({
                "peak": live.peak,
                "weights": _bytes(trained),
                "averages": _bytes(others) + _bytes(buffers),
                "adam_moments": _bytes(moments),
                "gradients": _bytes(p.grad for p in trained if p.grad is not None),
            })
    return out


def stage_steps(res: int, batch: int, fading: bool) -> list[tuple[int, int, float]]:
    """The steps that give a stage's peak: two of its fade-in where it has one (old and new
    layers both run, so it holds the most), else two of its stable phase; the first creates
    the new layers' Adam moments, the second holds them and the gradients from the first."""
    return [(res, batch, 0.5 if fading else 1.0)] * 2


def stage_peaks(
    cfg: Config, stages: list[tuple[int, int, bool]], mixed_precision: str
) -> list[dict[str, int]]:
    """Per stage (res, batch, whether it fades in), lowest first: the larger peak of its
    `stage_steps` with its parts (see `step_peaks`, plus the rest as activations and
    temporaries), the stages replayed in order on one trainer as a run goes through them."""
    steps = [s for res, batch, fading in stages for s in stage_steps(res, batch, fading)]
    peaks = step_peaks(cfg, steps, mixed_precision)
    out = []
    for i in range(len(stages)):
        parts = max(peaks[2 * i : 2 * i + 2], key=lambda p: p["peak"])
        held = sum(v for k, v in parts.items() if k != "peak")
        out.append({**parts, "activations_and_temporaries": max(0, parts["peak"] - held)})
    return out
