"""Snapshots read back: each file checked against the size and CRC32 that state.json records,
weights and optimizer states checked to be finite and to fit the networks, and a run loaded for
use (`load_run`). Nothing is unpickled: safetensors, `torch.load(weights_only=True)` and JSON.
"""

from __future__ import annotations

import io
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from progressive.config.migrate import migrate
from progressive.config.schedule import Schedule
from progressive.config.sections import Config
from progressive.core.errors import UserError
from progressive.core.files import first_line
from progressive.core.float32 import set_float32_math
from progressive.model.networks import (
    AVERAGE_OF,
    Energy,
    Generator,
    Inference,
    build_networks,
    in_use,
    network_names,
)
from progressive.run.checkpoint import (
    SNAPSHOT_VERSION,
    NonFiniteError,
    named_tensors,
    nonfinite,
    nonfinite_message,
)
from progressive.run.folder import STATE_NAME, list_snapshots, resolve_snapshot


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
        raise NonFiniteError(nonfinite_message(str(file), bad) + "; use an earlier snapshot")
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
    bad = nonfinite(named_tensors(states))
    if bad:
        raise NonFiniteError(nonfinite_message(str(file), bad) + "; use an earlier snapshot")
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
