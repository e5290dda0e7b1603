"""The growth schedule: stage, resolution, alpha, batch and learning rates as a pure function of
the number of real images shown.

Stage 0 trains at `start_res` for `stable_kimg`; every later stage fades its new layers in over
`fade_kimg` (alpha 0 -> 1, linear in images shown) and then trains them for `stable_kimg`. The
last stage runs on until `total_kimg`.
"""

from __future__ import annotations

from dataclasses import dataclass

from progressive.config.sections import NETWORKS, Config
from progressive.core.resolutions import resolutions


@dataclass(frozen=True)
class Phase:
    """Where training stands after `images_shown` real images."""

    stage: int  # 0 for start_res
    res: int
    alpha: float  # 1.0 outside fade-in
    fading: bool
    batch: int  # global batch size at this resolution
    lr: dict[str, float]  # per network
    stage_start: int  # images shown when this stage began
    stage_end: int | None  # images shown when the next stage begins (None: last stage)


class Schedule:
    """Maps images shown to a `Phase`."""

    def __init__(
        self,
        start_res: int,
        max_res: int,
        fade_kimg: float,
        stable_kimg: float,
        batch: dict[int, int],
        lr: dict[str, dict[int, float]],
    ):
        self.resolutions = resolutions(max_res, start_res)
        self.fade = round(fade_kimg * 1000)
        self.stable = round(stable_kimg * 1000)
        self.batch = batch
        self.lr = lr
        # Stage i starts after the first stage's stable phase plus (i - 1) fade+stable pairs.
        self.starts = [0] + [
            self.stable + (i - 1) * (self.fade + self.stable)
            for i in range(1, len(self.resolutions))
        ]

    @classmethod
    def from_config(cls, cfg: Config) -> Schedule:
        """Build from a configuration's schedule and learning rates."""
        s = cfg.schedule
        return cls(s.start_res, s.max_res, s.fade_kimg, s.stable_kimg, s.batch,
                   cfg.optim.lr_tables())

    def total(self, cfg: Config) -> int:
        """Images shown when the run ends: `total_kimg`, else the end of the last stage."""
        return cfg.total_images or self.end_of_last_stage

    @property
    def end_of_last_stage(self) -> int:
        """Images shown at the end of the last stage's stable phase."""
        last = len(self.resolutions) - 1
        return self.starts[last] + (self.fade if last > 0 else 0) + self.stable

    def stage_of(self, images_shown: int) -> int:
        """Index of the stage that `images_shown` falls in."""
        stage = 0
        for i, start in enumerate(self.starts):
            if images_shown >= start:
                stage = i
        return stage

    def at(self, images_shown: int) -> Phase:
        """The phase after `images_shown` real images."""
        stage = self.stage_of(images_shown)
        res = self.resolutions[stage]
        start = self.starts[stage]
        alpha = 1.0
        if stage > 0 and self.fade > 0:
            alpha = min(1.0, (images_shown - start) / self.fade)
        end = self.starts[stage + 1] if stage + 1 < len(self.starts) else None
        return Phase(
            stage=stage,
            res=res,
            alpha=alpha,
            fading=alpha < 1.0,
            batch=self.batch[res],
            lr={n: self.lr[n][res] for n in NETWORKS},
            stage_start=start,
            stage_end=end,
        )

    def stage_table(self) -> list[dict]:
        """One entry per resolution: res, fade_kimg, stable_kimg, batch, lr per network."""
        return [
            {
                "res": r,
                "fade_kimg": 0 if i == 0 else self.fade / 1000,
                "stable_kimg": self.stable / 1000,
                "batch": self.batch[r],
                "lr": {n: self.lr[n][r] for n in NETWORKS},
            }
            for i, r in enumerate(self.resolutions)
        ]
