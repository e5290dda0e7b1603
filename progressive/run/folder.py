"""The layout of a run folder: the one place that names its files.

    checkpoints/<run>/
      config.json                             the resolved configuration
      stats.jsonl                             one line per tick
      evaluations.jsonl                       one line per stage end (SWD, recon, energies)
      metric-<name>.jsonl                     one line per evaluation
      lock                                    held by the one training that writes here
      metric-cache/                           real-image features of the FID/KID datasets
      reals-0032px.png                        the fixed real images of the grids
      samples-0032px-000056000.png            samples from fixed latents, per stage end
      reconstructions-0032px-000056000.png    real images beside their reconstructions
      snapshot-000056000/                     a complete snapshot (see checkpoint.py)

The built-in dataset lives beside the runs, in `<runs folder>/_builtin/`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from progressive.config.sections import Config
from progressive.core.errors import UserError
from progressive.core.files import write_text_atomic

CONFIG_NAME = "config.json"
STATS_NAME = "stats.jsonl"
EVALUATIONS_NAME = "evaluations.jsonl"  # one line per stage end
STATE_NAME = "state.json"  # inside a snapshot; a snapshot without it is incomplete
METRIC_CACHE_NAME = "metric-cache"
_SNAPSHOT_RE = re.compile(r"^snapshot-(\d{9})$")
_GRID_RE = re.compile(r"^(samples|reconstructions)-\d{4}px-(\d{9})\.png$")


def run_name(cfg: Config) -> str:
    """Default run name: the preset, plus the dataset's folder name when there is one; on the
    built-in data the default rule's runs are named by their max-res (`auto-1024`)."""
    if cfg.data.path:
        return f"{cfg.preset}-{Path(cfg.data.path).name}"
    if cfg.preset == "auto":
        return f"auto-{cfg.schedule.max_res}"
    return cfg.preset


def builtin_dataset_path(out: str | os.PathLike, max_res: int, count: int) -> Path:
    """Where the built-in synthetic dataset for `max_res` lives under the runs folder `out`."""
    return Path(out) / "_builtin" / f"synthetic-{max_res}px-{count}"


def metric_file(run_dir: str | os.PathLike, name: str) -> Path:
    """The JSON-lines file of metric `name`."""
    return Path(run_dir) / f"metric-{name}.jsonl"


def metric_files(run_dir: str | os.PathLike) -> list[Path]:
    """Every metric file of a run, sorted by name."""
    return sorted(Path(run_dir).glob(metric_file("", "*").name))


def grid_file(run_dir: str | os.PathLike, kind: str, res: int, images_shown: int) -> Path:
    """A grid of `kind` ("samples" or "reconstructions"), named by resolution and images shown
    like snapshots, so a stage shorter than 1 kimg keeps its own grids."""
    return Path(run_dir) / f"{kind}-{res:04d}px-{images_shown:09d}.png"


def reals_file(run_dir: str | os.PathLike, res: int) -> Path:
    """The grid of the fixed real images at `res`."""
    return Path(run_dir) / f"reals-{res:04d}px.png"


def snapshot_dir(run_dir: str | os.PathLike, images_shown: int) -> Path:
    """The snapshot folder at `images_shown`."""
    return Path(run_dir) / f"snapshot-{images_shown:09d}"


def list_snapshots(run_dir: str | os.PathLike) -> list[Path]:
    """Complete snapshots of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [
        p for p in run_dir.iterdir() if _SNAPSHOT_RE.match(p.name) and (p / STATE_NAME).is_file()
    ]
    return sorted(found, key=lambda p: p.name)


def resolve_snapshot(path: str | os.PathLike) -> Path:
    """A snapshot folder from a run folder (its newest snapshot) or a snapshot folder."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; pass a run folder or a snapshot")
    if (path / STATE_NAME).is_file():
        return path
    snapshots = list_snapshots(path)
    if not snapshots:
        raise UserError(f"{path} holds no complete snapshot; pass a run folder with snapshots")
    return snapshots[-1]


def branch(snapshot: Path, shown: int, run_dir: Path) -> Path:
    """Start the new run folder `run_dir` from `snapshot` (taken at `shown` images) of another
    run: a copy of the snapshot, the configuration, and the history up to it (grids, and the
    lines of stats, evaluations and metrics with at most its images shown), so the branch reads
    as one run. The source run is left as it is. Returns the copied snapshot."""
    source, target = snapshot.parent, snapshot_dir(run_dir, shown)
    if list_snapshots(run_dir):
        raise UserError(
            f"run {run_dir} already has snapshots; pass another --name to branch from {snapshot}"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        grid = _GRID_RE.match(path.name)
        if path.name == CONFIG_NAME or path.name.startswith("reals-") or (
            grid and int(grid[2]) <= shown
        ):
            shutil.copy2(path, run_dir / path.name)
        elif path.suffix == ".jsonl":
            kept = [line for line in path.read_text().splitlines(keepends=True)
                    if _shown(line) <= shown]
            write_text_atomic(run_dir / path.name, "".join(kept))
    copy = run_dir / f".{target.name}.partial"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(snapshot, copy)
    os.replace(copy, target)  # whole or absent, like a snapshot written here
    return target


def _shown(line: str) -> float:
    """Images shown of one JSON line; a torn or foreign line sorts last (dropped)."""
    try:
        return float(json.loads(line)["images_shown"])
    except (ValueError, KeyError, TypeError):
        return float("inf")
