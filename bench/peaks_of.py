"""Run one `progressive` command in this process and print its peak host and GPU memory.

    python bench/peaks_of.py evaluate --ckpt RUN --data DATA --res 1024 --n 16

Host: the process's peak resident set size (getrusage; the interpreter and libraries
included). GPU: torch's allocator peak (`torch.cuda.max_memory_allocated`), where CUDA was
used. The last line is `peaks: host ... MiB, gpu ... MiB`; the exit status is the command's.
"""

from __future__ import annotations

import resource
import sys

import torch

from progressive.cli import main


def run(args: list[str]) -> int:
    try:
        main.main(args=args, prog_name="progressive", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    status = run(sys.argv[1:])
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    gpu = (f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
           if torch.cuda.is_available() and torch.cuda.is_initialized() else "none used")
    print(f"peaks: host {host:.0f} MiB, gpu {gpu}", flush=True)
    sys.exit(status)
