"""What every benchmark records about the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def describe() -> dict:
    """CPU, cores, GPU, library versions, torch threads and the load average at the start."""
    import torch
    import torchvision

    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "gpu": gpu,
        "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "threads": torch.get_num_threads(),
        "load_avg_start": os.getloadavg()[0],
    }


def headline(machine: dict, where: str | None = None) -> str:
    """One line naming the machine: CPU, cores (or `where`), torch, threads, load at start."""
    where = where or f"{machine['cores']} cores"
    return (f"machine: {machine['cpu']}, {where}, torch {machine['torch']}, "
            f"{machine['threads']} threads, load average {machine['load_avg_start']:.1f}")


def load_line(machine: dict) -> str:
    """The load average at the start and (recorded by the benchmark) at the end."""
    return (f"load average: {machine['load_avg_start']:.1f} at start, "
            f"{machine['load_avg_end']:.1f} at end")


def write_report(out: str | os.PathLike, report: dict) -> Path:
    """Write a benchmark's JSON report, making its folder."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return out
