"""Pieces the soaks share: their command line and a process-liveness check."""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def soak_arguments(doc: str, name: str, trials: int | None = 20):
    """Parse a soak's options; returns (args, output folder, seeded RNG, start time)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    if trials is not None:
        ap.add_argument("--trials", type=int, default=trials)
        ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix=f"soak-{name}-"))
    out.mkdir(parents=True, exist_ok=True)
    return args, out, random.Random(getattr(args, "seed", 0)), time.perf_counter()
