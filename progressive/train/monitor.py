"""What the loop watches: ticks of statistics, ranks in agreement, finite steps, divergence."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from tqdm import tqdm

from progressive.config.schedule import Phase
from progressive.core.errors import UserError
from progressive.core.files import append_jsonl


class Ticks:
    """Step statistics summed between ticks; at a tick they are averaged over steps and
    processes, appended to stats.jsonl and shown on the progress bar."""

    def __init__(self, acc: Accelerator, stats_file: Path, bar: tqdm, images_shown: int):
        self.acc, self.stats_file, self.bar = acc, stats_file, bar
        self._reset(images_shown)

    def _reset(self, images_shown: int) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps, self.start, self.start_images = 0, time.perf_counter(), images_shown

    def restart_clock(self) -> None:
        self.start = time.perf_counter()

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1

    def log(self, images_shown: int, phase: Phase) -> dict:
        """The tick's record, as stats.jsonl gets it."""
        means = {k: (self.acc.reduce(v, "mean") / self.steps).item() for k, v in self.sums.items()}
        elapsed = time.perf_counter() - self.start
        shown = images_shown - self.start_images
        record = {
            "images_shown": images_shown,
            "kimg": images_shown / 1000,
            "stage": phase.stage,
            "res": phase.res,
            "alpha": round(phase.alpha, 6),
            "batch": phase.batch,
            "mixed_precision": self.acc.mixed_precision,
            "images_per_s": shown / max(elapsed, 1e-9),
            "sec_per_kimg": elapsed * 1000 / max(shown, 1),
            **means,
            "time": time.time(),
        }
        if self.acc.is_main_process:
            append_jsonl(self.stats_file, record)
        self.bar.set_postfix_str(
            f"stage {phase.stage} {phase.res}px a={phase.alpha:.2f} "
            f"rec/px={means['rec_per_pixel']:.3f} "
            f"E+={means['energy_real']:.2f} E-={means['energy_fake']:.2f} "
            f"{record['images_per_s']:.0f} img/s"
        )
        self._reset(images_shown)
        return record


def agree(acc: Accelerator, value: str | None) -> str | None:
    """The main process's `value` on every rank."""
    if acc.num_processes == 1:
        return value

    return broadcast_object_list([value], from_process=0)[0]


def step_is_finite(stats: dict[str, torch.Tensor], precision: str) -> torch.Tensor:
    """Whether a step's losses and gradients were finite, as a 0-dim bool tensor on the
    step's device. The gradient norms are taken after the all-reduce, so every rank reaches
    the same verdict at the same step; a non-finite loss on any rank makes every rank's
    gradients non-finite. Under fp16 the loss scaler skips steps with overflowing gradients
    by design, so only the local losses count there."""
    keys = [k for k in stats if k.startswith("loss") or
            (precision != "fp16" and k.startswith("grad_norm"))]
    return torch.isfinite(torch.stack([stats[k] for k in keys])).all()


class FiniteSteps:
    """Every step checked for non-finite losses and gradients. On the CPU the verdict is read
    at once; on a GPU it is folded into a flag on the device and read at each tick and before
    each snapshot, so the check never makes the host wait for the GPU."""

    def __init__(self, device: torch.device, precision: str, images_shown: int = 0):
        self.at_once = device.type == "cpu"
        self.precision = precision
        self.flag: torch.Tensor | None = None
        self.since = images_shown

    def add(self, stats: dict[str, torch.Tensor], images_shown: int) -> str | None:
        """None, or where training diverged (this step)."""
        ok = step_is_finite(stats, self.precision)
        if self.at_once:
            return None if bool(ok) else f"at {images_shown:,} images"
        self.flag = ok if self.flag is None else self.flag & ok
        return None

    def confirm(self, images_shown: int) -> str | None:
        """None, or where training diverged (a step since the last confirmation)."""
        flag, self.flag = self.flag, None
        since, self.since = self.since, images_shown
        if flag is None or bool(flag):
            return None
        return f"between {since:,} and {images_shown:,} images"


def diverged(where: str, last_good: Path | None, why: str) -> UserError:
    if last_good is None:
        then = "no snapshot of this run is usable; start again with a lower --lr"
    else:
        then = (f"the last good snapshot is {last_good}: continue from it with a lower --lr "
                f"(progressive train --resume {last_good} --lr ...)")
    return UserError(f"training diverged {where} ({why}); {then}")
