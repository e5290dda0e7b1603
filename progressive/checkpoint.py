"""Snapshots: writing them, and loading them for training or use.

A snapshot `snapshot-<images_shown:09d>/` holds the weights of the three networks and the
generator average (safetensors), the optimizer states (`torch.load(weights_only=True)`), and
`state.json` (format version, images shown, configuration). It is written under a temporary
name and renamed, so a crash never leaves a half snapshot as the newest. The data order and
all noise are derived from (seed, rank, images shown), so no sampler or generator state is
stored.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from progressive.errors import UserError
from progressive.files import first_line, fsync_path, temporary_path
from progressive.networks import Energy, Generator, Inference, build_networks
from progressive.presets import normalize
from progressive.run_folder import STATE_NAME, resolve_snapshot, snapshot_dir
from progressive.schedule import Schedule

SNAPSHOT_VERSION = 1
WEIGHTS = ("generator", "generator_ema", "energy", "inference")


def save_snapshot(
    run_dir: str | os.PathLike,
    images_shown: int,
    cfg: dict,
    networks: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
) -> Path:
    """Write a complete snapshot atomically and return its path."""
    final = snapshot_dir(Path(run_dir), images_shown)
    tmp = temporary_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in WEIGHTS:
        tensors = {k: v.detach().cpu().contiguous() for k, v in networks[name].state_dict().items()}
        save_file(tensors, tmp / f"{name}.safetensors")
    torch.save({k: o.state_dict() for k, o in optimizers.items()}, tmp / "optimizers.pt")
    state = {"version": SNAPSHOT_VERSION, "images_shown": images_shown, "config": cfg}
    (tmp / STATE_NAME).write_text(json.dumps(state, indent=2))
    # Every file reaches the disk before the rename publishes the snapshot, and the rename
    # itself before anything relies on it: a power cut leaves a whole snapshot or none.
    for f in tmp.iterdir():
        fsync_path(f)
    if final.exists():  # the same point saved twice (e.g. a stage end that is also periodic)
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_path(final.parent)
    return final


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
        state["config"] = normalize(state["config"])
        state["images_shown"] = int(state["images_shown"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(
            f"{snapshot / STATE_NAME} is malformed ({e}); use another snapshot"
        ) from None
    return state


def load_weights(snapshot: Path, networks: dict[str, torch.nn.Module]) -> None:
    """Load the four weight files of `snapshot` into `networks` (strict)."""
    for name in WEIGHTS:
        file = snapshot / f"{name}.safetensors"
        try:
            networks[name].load_state_dict(load_file(file))
        except (OSError, SafetensorError, RuntimeError, ValueError) as e:
            raise UserError(
                f"{file} cannot be loaded ({first_line(e)}); use another snapshot"
            ) from None


def load_optimizers(snapshot: Path, optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """Load optimizer states saved by `save_snapshot` (no arbitrary unpickling)."""
    file = snapshot / "optimizers.pt"
    try:
        states = torch.load(file, map_location="cpu", weights_only=True)
        for name, opt in optimizers.items():
            opt.load_state_dict(states[name])
    except Exception as e:  # any failure here means a damaged snapshot
        raise UserError(
            f"{file} cannot be loaded ({type(e).__name__}); use another snapshot"
        ) from None


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

    config: dict
    generator: Generator  # the generator average, unless loaded with raw_generator
    energy: Energy
    inference: Inference
    images_shown: int
    res: int
    alpha: float
    device: torch.device
    run_dir: Path
    snapshot: Path

    @property
    def latent(self) -> int:
        return int(self.config["latent"])


def load_run(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    res: int | None = None,
    raw_generator: bool = False,
) -> LoadedRun:
    """Load a run folder's newest snapshot, or one snapshot, for use at `res` (default: the
    snapshot's own resolution and alpha) on `device` (default: cuda when available)."""
    dev = pick_device(device)
    snapshot = resolve_snapshot(path)
    state = read_state(snapshot)
    cfg = state["config"]
    networks = build_networks(cfg)
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
        energy=networks["energy"],
        inference=networks["inference"],
        images_shown=state["images_shown"],
        res=work_res,
        alpha=alpha,
        device=dev,
        run_dir=snapshot.parent,
        snapshot=snapshot,
    )
