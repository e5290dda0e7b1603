"""Which mixed precision a run uses: `auto` is bf16 where the device computes in bf16 natively,
fp32 elsewhere (emulated bf16 is many times slower than fp32: bench/README.md)."""

from __future__ import annotations

from functools import cache

import torch

# CPU flags (Linux /proc/cpuinfo names) of native bf16 arithmetic: AVX512-BF16 and AMX.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo; empty where there is none (macOS, Windows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` runs bf16 natively: a CUDA GPU of compute capability 8.0 or later, or a
    CPU with AVX512-BF16 or AMX."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_capability(index) >= (8, 0)
    if device.type == "cpu":
        return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)
    return False


def resolve(mixed_precision: str, device: torch.device | str) -> str:
    """accelerate's mixed precision ("no", "bf16" or "fp16") for a configured one on `device`."""
    if mixed_precision != "auto":
        return mixed_precision
    return "bf16" if native_bf16(device) else "no"


def describe(mixed_precision: str, device: torch.device | str) -> str:
    """A short line saying what was chosen and why, for logs and --dry-run."""
    chosen = resolve(mixed_precision, device)
    name = {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[chosen]
    if mixed_precision != "auto":
        return f"{name} (--mixed-precision {mixed_precision})"
    why = "native bf16" if chosen == "bf16" else "no native bf16"
    return f"{name} (auto: {torch.device(device).type} with {why})"
