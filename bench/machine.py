"""What every benchmark records about the machine it ran on."""

from __future__ import annotations

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
