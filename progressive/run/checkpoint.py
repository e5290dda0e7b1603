"""Snapshots: writing them, pruning old ones, and cleaning what a killed writer left.

A snapshot `snapshot-<images_shown:09d>/` holds the weights of the three networks and the
generator average (safetensors), the optimizer states (`torch.load(weights_only=True)`), and
`state.json` (format version, images shown, configuration, and the size and CRC32 of every
other file, checked whenever one is loaded). It is written under a temporary name and renamed,
so a crash never leaves a half snapshot as the newest; it is refused (`NonFiniteError`) if any
weight or optimizer tensor is not finite, and loading (`progressive.run.loading`) refuses such
a snapshot too. The data order and all noise are derived from (seed, rank, images shown), so no
sampler or generator state is stored.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

from progressive.config.schedule import Schedule
from progressive.config.sections import Config
from progressive.core.errors import UserError
from progressive.core.files import fsync_path, temporary_path
from progressive.model.networks import NETWORK_NAMES, network_names
from progressive.run.folder import STATE_NAME, list_snapshots, snapshot_dir

SNAPSHOT_VERSION = 1
WEIGHTS = NETWORK_NAMES  # in every snapshot; `network_names` adds any average the run keeps
# Hidden names of snapshots being written, and of published ones being replaced; and of any
# file written under a temporary name and renamed (grids, JSON).
_TEMP_RE = re.compile(r"^\.snapshot-(\d{9})\.(tmp|replaced)-\d+$")
_TEMP_FILE_RE = re.compile(r"^\..+\.tmp-\d+(\.\w+)?$")


class NonFiniteError(UserError):
    """A snapshot's tensors hold NaN or infinity."""


def named_tensors(obj: object, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in nested dicts and lists, with a dotted name."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from named_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from named_tensors(v, f"{prefix}.{i}" if prefix else str(i))


def nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors that hold NaN or infinity."""
    return [
        name for name, t in named
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


def nonfinite_message(where: str, names: list[str]) -> str:
    """One line naming where non-finite values are and the first tensor holding them."""
    more = f" and {len(names) - 1} more" if len(names) > 1 else ""
    return f"{where} holds non-finite values (NaN or infinity) in {names[0]!r}{more}"


def save_snapshot(
    run_dir: str | os.PathLike,
    images_shown: int,
    cfg: Config,
    networks: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
) -> Path:
    """Write a complete snapshot atomically and return its path."""
    final = snapshot_dir(Path(run_dir), images_shown)
    weights = {
        name: {k: v.detach().cpu().contiguous() for k, v in networks[name].state_dict().items()}
        for name in network_names(cfg.optim.half_lives())
    }
    optimizer_states = {k: o.state_dict() for k, o in optimizers.items()}
    bad = nonfinite(named_tensors(weights))
    bad += nonfinite(named_tensors(optimizer_states, "optimizers"))
    if bad:  # nothing is written: a snapshot is only ever a point worth continuing from
        raise NonFiniteError(nonfinite_message(f"the snapshot at {images_shown} images", bad))
    tmp = temporary_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(tmp, weights, optimizer_states, images_shown, cfg)
    except OSError as e:  # nothing half-written stays; the snapshots before are untouched
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        size = sum(t.nbytes for _, t in named_tensors([weights, optimizer_states]))
        raise UserError(
            f"no space left in {final.parent} for the snapshot at {images_shown:,} images "
            f"(it needs about {size / 2**20:,.0f} MiB); free some and continue with "
            "--resume auto"
        ) from None
    # Every file reached the disk before the rename publishes the snapshot, and the rename
    # itself does before anything relies on it: a power cut leaves a whole snapshot or none.
    old = None
    if final.exists():
        # The same point saved again (a resumed run with other options): the published
        # snapshot steps aside under a hidden name and is deleted only once the new one is in
        # place; `clean_run_dir` puts it back if a crash comes between the two renames.
        old = final.with_name(f".{final.name}.replaced-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_path(final.parent)
    if old is not None:
        shutil.rmtree(old)
    return final


def _write(
    tmp: Path, weights: dict, optimizer_states: dict, images_shown: int, cfg: Config
) -> None:
    """A snapshot's files in the folder `tmp`, each synced to the disk."""
    tmp.mkdir(parents=True)
    for name in weights:
        save_file(weights[name], tmp / f"{name}.safetensors")
    torch.save(optimizer_states, tmp / "optimizers.pt")
    state = {
        "version": SNAPSHOT_VERSION,
        "images_shown": images_shown,
        "config": cfg.to_dict(),
        # Size and CRC32 of every file as written: a file damaged later is refused on loading.
        "files": {
            f.name: {"bytes": len(data), "crc32": zlib.crc32(data)}
            for f in sorted(tmp.iterdir()) for data in (f.read_bytes(),)
        },
    }
    (tmp / STATE_NAME).write_text(json.dumps(state, indent=2))
    for f in tmp.iterdir():
        fsync_path(f)
    fsync_path(tmp)


def stage_boundaries(cfg: Config) -> list[int]:
    """Images shown at the start of the run and at the end of every stage."""
    schedule = Schedule.from_config(cfg)
    return [0, *schedule.starts[1:], schedule.end_of_last_stage]


def prune_snapshots(
    run_dir: str | os.PathLike, keep: int, boundaries: Iterable[int],
    protect: Iterable[str | os.PathLike | None] = (),
) -> list[str]:
    """Delete the run's snapshots but the newest `keep` (0 keeps all), the first at or after
    each of `boundaries` (the stage ends: each one's grids and evaluation point at it) and
    those in `protect` (the one a run was resumed from). Returns the names deleted."""
    if keep <= 0:
        return []
    snapshots = list_snapshots(run_dir)
    kept = {p.name for p in snapshots[-keep:]} | {Path(p).name for p in protect if p}
    shown = {p.name: int(p.name.rsplit("-", 1)[1]) for p in snapshots}
    for boundary in boundaries:
        after = [p.name for p in snapshots if shown[p.name] >= boundary]
        if after:
            kept.add(after[0])
    deleted = []
    for p in snapshots:
        if p.name not in kept:
            hidden = temporary_path(p)  # gone from the list at once; clean_run_dir ends it
            os.replace(p, hidden)
            shutil.rmtree(hidden, ignore_errors=True)
            deleted.append(p.name)
    return deleted


def clean_run_dir(run_dir: str | os.PathLike) -> list[str]:
    """Remove what killed writers left in a run folder (temporary snapshot folders), and put
    back a snapshot that was stepping aside for its replacement. Only the holder of the run
    folder's lock may call this. Returns the names removed or restored."""
    run_dir = Path(run_dir)
    done = []
    if not run_dir.is_dir():
        return done
    for p in sorted(run_dir.iterdir()):
        m = _TEMP_RE.match(p.name)
        if m is None:
            if _TEMP_FILE_RE.match(p.name) and p.is_file():
                p.unlink()
                done.append(f"removed {p.name}")
            continue
        final = run_dir / f"snapshot-{m.group(1)}"
        if m.group(2) == "replaced" and not final.exists():
            os.replace(p, final)
            done.append(f"restored {final.name}")
        else:
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {p.name}")
    if done:
        fsync_path(run_dir)
    return done
