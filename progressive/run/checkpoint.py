"""Snapshots: writing them, and loading them for training or use.

A snapshot `snapshot-<images_shown:09d>/` holds the weights of the three networks and the
generator average (safetensors), the optimizer states (`torch.load(weights_only=True)`), and
`state.json` (format version, images shown, configuration, and the size and CRC32 of every
other file, checked whenever one is loaded). It is written under a temporary name and renamed,
so a crash never leaves a half snapshot as the newest; it is refused (`NonFiniteError`) if any
weight or optimizer tensor is not finite, and loading refuses such a snapshot too. The data
order and all noise are derived from (seed, rank, images shown), so no sampler or generator
state is stored.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from progressive.config.migrate import migrate
from progressive.config.schedule import Schedule
from progressive.config.sections import Config
from progressive.core.errors import UserError
from progressive.core.files import first_line, fsync_path, temporary_path
from progressive.core.float32 import set_float32_math
from progressive.model.networks import (
    AVERAGE_OF,
    NETWORK_NAMES,
    Energy,
    Generator,
    Inference,
    build_networks,
    in_use,
    network_names,
)
from progressive.run.folder import STATE_NAME, list_snapshots, resolve_snapshot, snapshot_dir

SNAPSHOT_VERSION = 1
WEIGHTS = NETWORK_NAMES  # in every snapshot; `network_names` adds any average the run keeps
# Hidden names of snapshots being written, and of published ones being replaced; and of any
# file written under a temporary name and renamed (grids, JSON).
_TEMP_RE = re.compile(r"^\.snapshot-(\d{9})\.(tmp|replaced)-\d+$")
_TEMP_FILE_RE = re.compile(r"^\..+\.tmp-\d+(\.\w+)?$")


class NonFiniteError(UserError):
    """A snapshot's tensors hold NaN or infinity."""


def _tensors(obj: object, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in nested dicts and lists, with a dotted name."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}.{i}" if prefix else str(i))


def nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors that hold NaN or infinity."""
    return [
        name for name, t in named
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


def _nonfinite_message(where: str, names: list[str]) -> str:
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
    bad = nonfinite(_tensors(weights)) + nonfinite(_tensors(optimizer_states, "optimizers"))
    if bad:  # nothing is written: a snapshot is only ever a point worth continuing from
        raise NonFiniteError(_nonfinite_message(f"the snapshot at {images_shown} images", bad))
    tmp = temporary_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(tmp, weights, optimizer_states, images_shown, cfg)
    except OSError as e:  # nothing half-written stays; the snapshots before are untouched
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        size = sum(t.nbytes for _, t in _tensors([weights, optimizer_states]))
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


def read_state(snapshot: Path) -> dict:
    """The validated `state.json` of a snapshot."""
    try:
        state = json.loads((snapshot / STATE_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(
            f"{snapshot / STATE_NAME} is unreadable ({e}); use another snapshot"
        ) from None
    if not isinstance(state, dict) or state.get("version") != SNAPSHOT_VERSION:
        version = state.get("version") if isinstance(state, dict) else None
        raise UserError(
            f"{snapshot} has snapshot version {version!r}; this release reads "
            f"version {SNAPSHOT_VERSION}"
        )
    try:
        state["config"] = migrate(state["config"])
        state["images_shown"] = int(state["images_shown"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(
            f"{snapshot / STATE_NAME} is malformed ({e}); use another snapshot"
        ) from None
    return state


def _cause(e: BaseException) -> str:
    """The exception's type and the first line of its message."""
    return f"{type(e).__name__}: {first_line(e)}"


def _read_verified(snapshot: Path, name: str) -> bytes:
    """The bytes of one file of `snapshot`, checked against the size and CRC32 that state.json
    records (snapshots from before the record are taken as they are)."""
    file = snapshot / name
    try:
        data = file.read_bytes()
    except OSError as e:
        raise UserError(f"{file} cannot be read ({_cause(e)}); use another snapshot") from None
    try:
        record = json.loads((snapshot / STATE_NAME).read_text()).get("files", {}).get(name)
    except (OSError, ValueError, AttributeError):
        record = None  # state.json itself is checked by read_state
    if isinstance(record, dict):
        if len(data) != record.get("bytes") or zlib.crc32(data) != record.get("crc32"):
            raise UserError(
                f"{file} is damaged (its size or CRC32 differs from what state.json records); "
                "use another snapshot"
            )
    return data


def read_weights(snapshot: Path, name: str) -> dict[str, torch.Tensor]:
    """The tensors of one weight file of `snapshot`, verified and checked to be finite."""
    file = snapshot / f"{name}.safetensors"
    data = _read_verified(snapshot, file.name)
    try:
        tensors = load_safetensors(data)
    except (OSError, SafetensorError, RuntimeError, ValueError) as e:
        raise UserError(f"{file} cannot be loaded ({_cause(e)}); use another snapshot") from None
    bad = nonfinite(tensors.items())
    if bad:
        raise NonFiniteError(_nonfinite_message(str(file), bad) + "; use an earlier snapshot")
    return tensors


def _check_shapes(file: Path, network: torch.nn.Module, tensors: dict) -> None:
    """A one-line error naming the first tensor that does not fit `network`."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if wrong:
        k = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise UserError(
            f"{file}: {k!r} has shape {list(tensors[k].shape)} but the snapshot's configuration "
            f"builds {list(expected[k].shape)}{more}; the file belongs to another run"
        )
    if missing or unexpected:
        what = f"lacks {missing[0]!r}" if missing else f"has an unknown tensor {unexpected[0]!r}"
        n = len(missing) + len(unexpected)
        raise UserError(
            f"{file} {what}{f' ({n} mismatches)' if n > 1 else ''}; the file belongs to "
            "another run or version"
        )


def load_weights(snapshot: Path, networks: dict[str, torch.nn.Module]) -> None:
    """Load the weight files of `snapshot` into `networks` (strict, finite). An average the
    snapshot lacks (the run kept none until now) starts from the averaged network's weights."""
    files = read_state(snapshot).get("files", {})
    for name in networks:
        file = snapshot / f"{name}.safetensors"
        missing_average = name in AVERAGE_OF and file.name not in files
        tensors = read_weights(snapshot, AVERAGE_OF[name] if missing_average else name)
        _check_shapes(file, networks[name], tensors)
        try:
            networks[name].load_state_dict(tensors)
        except (RuntimeError, ValueError) as e:
            raise UserError(
                f"{file} cannot be loaded ({_cause(e)}); use another snapshot"
            ) from None


def read_optimizers(snapshot: Path) -> dict:
    """The optimizer states of `snapshot` (no arbitrary unpickling), checked to be finite."""
    file = snapshot / "optimizers.pt"
    data = _read_verified(snapshot, file.name)
    try:
        states = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # any failure here means a damaged file
        raise UserError(f"{file} cannot be loaded ({_cause(e)}); use another snapshot") from None
    if not isinstance(states, dict):
        raise UserError(f"{file} holds {type(states).__name__}, not optimizer states")
    bad = nonfinite(_tensors(states))
    if bad:
        raise NonFiniteError(_nonfinite_message(str(file), bad) + "; use an earlier snapshot")
    return states


def load_optimizers(snapshot: Path, optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """Load optimizer states saved by `save_snapshot` into `optimizers`."""
    file = snapshot / "optimizers.pt"
    states = read_optimizers(snapshot)
    for name, opt in optimizers.items():
        try:
            opt.load_state_dict(states[name])
        except Exception as e:  # a missing network, or groups that do not match
            raise UserError(
                f"{file} does not fit this run ({name}: {_cause(e)}); use another snapshot"
            ) from None


def check_snapshot(snapshot: Path) -> None:
    """Raise a one-line `UserError` unless `snapshot` is whole and finite: its state, every
    weight file and the optimizer states are read and checked."""
    for name in network_names(read_state(snapshot)["config"].optim.half_lives()):
        read_weights(snapshot, name)
    read_optimizers(snapshot)


def newest_usable_snapshot(run_dir: Path, notify=print) -> Path | None:
    """The newest snapshot of a run that `check_snapshot` accepts; each one skipped is
    reported through `notify`."""
    for snapshot in reversed(list_snapshots(run_dir)):
        try:
            check_snapshot(snapshot)
            return snapshot
        except UserError as e:
            notify(f"skipping {snapshot.name}: {e}")
    return None


def pick_device(device: str | torch.device | None) -> torch.device:
    """`device` as given, or cuda when available, else cpu."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(
            f"--device {device!r} is not a device (use cpu, cuda, cuda:1, ...)"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device here; use --device cpu")
    return dev


@dataclass
class LoadedRun:
    """A snapshot's networks (eval mode, no gradients), and the resolution and alpha to use
    them at: the snapshot's own, or a completed stage's with alpha 1."""

    config: Config
    generator: Generator  # the generator average, unless loaded with raw_generator
    energy: Energy  # its average where the run keeps one, unless loaded with raw_energy
    inference: Inference  # its average where the run keeps one, unless loaded with raw_inference
    images_shown: int
    res: int
    alpha: float
    device: torch.device
    run_dir: Path
    snapshot: Path

    @property
    def latent(self) -> int:
        return self.config.networks.latent


def load_run(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    res: int | None = None,
    raw_generator: bool = False,
    raw_inference: bool = False,
    raw_energy: bool = False,
) -> LoadedRun:
    """Load a run folder's newest snapshot, or one snapshot, for use at `res` (default: the
    snapshot's own resolution and alpha) on `device` (default: cuda when available), with
    float32 math as the run trained (its `tf32` setting)."""
    dev = pick_device(device)
    snapshot = resolve_snapshot(path)
    state = read_state(snapshot)
    cfg = state["config"]
    set_float32_math(cfg.run.tf32)  # the run's own fp32 math, so figures match training
    networks = build_networks(cfg.networks, cfg.schedule.max_res, cfg.optim.half_lives())
    load_weights(snapshot, networks)
    for net in networks.values():
        net.to(dev).eval().requires_grad_(False)
    schedule = Schedule.from_config(cfg)
    phase = schedule.at(state["images_shown"])
    work_res, alpha = phase.res, phase.alpha
    if res is not None and res != phase.res:
        done = [r for r in schedule.resolutions if r < phase.res]
        if res not in done:
            trained = ", ".join(str(r) for r in done + [phase.res])
            raise UserError(f"--res {res} is not a resolution this run has trained ({trained})")
        work_res, alpha = res, 1.0
    return LoadedRun(
        config=cfg,
        generator=networks["generator" if raw_generator else "generator_ema"],
        energy=in_use(networks, "energy", raw_energy),
        inference=in_use(networks, "inference", raw_inference),
        images_shown=state["images_shown"],
        res=work_res,
        alpha=alpha,
        device=dev,
        run_dir=snapshot.parent,
        snapshot=snapshot,
    )
