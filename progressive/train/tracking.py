"""Trackers (TensorBoard, W&B) through accelerate: the tick statistics, the stage-end
evaluations and sample grids of a run, beside its stats.jsonl and evaluations.jsonl."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import is_tensorboard_available, is_wandb_available
from torchvision.utils import make_grid

from progressive.config.sections import Config
from progressive.core.errors import UserError
from progressive.core.grids import GRID_PADDING

# Each tracker: accelerate's availability check and the pip package that provides it.
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def available(name: str) -> bool:
    """Whether the tracker `name` can be imported."""
    return {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}[name]()


def check_tracker(name: str | None) -> None:
    """A one-line error, before training starts, when tracker `name` is not installed."""
    if name is not None and not available(name):
        raise UserError(f"--log-with {name}: the {name} tracker is not installed; "
                        f"pip install {PACKAGES[name]}")


def flat_config(cfg: Config) -> dict[str, float | int | str | bool]:
    """The configuration as `section.field` scalars (tables as text), as trackers take it."""
    flat: dict[str, float | int | str | bool] = {}
    for section, fields in cfg.to_dict().items():
        if not isinstance(fields, dict):  # the preset's name
            flat[section] = str(fields)
            continue
        for key, value in fields.items():
            scalar = value is None or isinstance(value, bool | int | float | str)
            flat[f"{section}.{key}"] = ("none" if value is None else value) if scalar else \
                json.dumps(value)
    return flat


def _scalars(record: dict, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in record.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


class Tracking:
    """A run's tracker on the main process; every method does nothing when the run has none."""

    def __init__(self, acc: Accelerator, cfg: Config, run_dir: Path):
        self.acc = acc
        self.name = cfg.run.log_with
        if self.name is not None:
            kwargs = {"wandb": {"name": run_dir.name, "dir": str(run_dir)}}
            acc.init_trackers(run_dir.name, config=flat_config(cfg),
                              init_kwargs={k: v for k, v in kwargs.items() if k == self.name})

    def tick(self, record: dict, lr: dict[str, float]) -> None:
        """The scalars of one stats.jsonl record and the learning rates, at its images_shown."""
        if self.name is None:
            return
        skip = ("images_shown", "time")
        values = _scalars({k: v for k, v in record.items() if k not in skip})
        values |= {f"lr/{k}": float(v) for k, v in lr.items()}
        self.acc.log(values, step=record["images_shown"])

    def evaluation(self, record: dict) -> None:
        """The numeric values of one stage-end evaluation, under eval/."""
        if self.name is None or not record:
            return
        skip = ("images_shown", "time")
        values = _scalars({k: v for k, v in record.items() if k not in skip}, "eval/")
        self.acc.log(values, step=record["images_shown"])

    def grids(self, grids: dict[str, torch.Tensor], nrow: int, step: int) -> None:
        """Image grids (float [-1, 1] batches) by tag, as the PNGs of the run folder show them."""
        if self.name is None or not self.acc.is_main_process:
            return

        chw = {tag: make_grid(images.float().cpu(), nrow=nrow, padding=GRID_PADDING,
                              normalize=True, value_range=(-1, 1))
               for tag, images in grids.items()}
        if self.name == "tensorboard":
            writer = self.acc.get_tracker("tensorboard", unwrap=True)
            for tag, image in chw.items():
                writer.add_image(tag, image, global_step=step)
        elif self.name == "wandb":
            self.acc.get_tracker("wandb").log_images({k: [v] for k, v in chw.items()}, step=step)

    def end(self) -> None:
        if self.name is not None:
            self.acc.end_training()
