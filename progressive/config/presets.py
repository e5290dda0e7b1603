"""Training configurations: one preset per experiment of the paper, `demo`, the 32 px recipe,
and `auto` (no preset named): sizes derived from max_res and the device
(`progressive.config.sizing`).

A preset is a set of `section.field` values over the defaults of `progressive.config.sections`;
`make_config` applies a preset and then the values given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from progressive.config.keys import replace
from progressive.config.sections import Config, every_res
from progressive.config.sizing import (
    PGGAN_BATCH,
    PGGAN_LR,
    builtin_cap,
    default_device,
    every_lr,
    rule,
)
from progressive.core.errors import UserError
from progressive.core.resolutions import check_resolution

AUTO = "auto"  # the preset name of a run that named none

# The authors' CIFAR-10 code: Adam(0.5, 0.999), E 1e-4, G and I 3e-4, G weight decay 5e-4,
# batch 100, latent 100, clip 100, summed reconstruction error, energy used raw. Widths
# 1024 / 512 (256 channels at 4x4 down to 32 at 32x32) cost about what the authors' DCGAN-sized
# networks cost per image (3.8 against 4.1 GFLOP per training image at 32x32; 16384 / 512 costs
# 255), so a run sees as many images in the same time.
_PAPER = {
    "networks.fmap_base": 1024,
    "networks.fmap_max": 512,
    "networks.latent": 100,
    "schedule.batch": every_res(100),
    "optim.lr_generator": every_res(3e-4),
    "optim.lr_energy": every_res(1e-4),
    "optim.lr_inference": every_res(3e-4),
    "optim.betas": (0.5, 0.999),
    "optim.weight_decay_generator": 5e-4,
    "optim.grad_clip": 100.0,
    "loss.rec_scaling": "sum",
    "loss.energy_drift": 0.0,
    "loss.energy_drift_fake": 0.0,
    "loss.marginal_kl": 0.0,
    "loss.code_decorrelation": 0.0,
    "loss.energy_outliers": 0.0,
}

# Progressive GAN's single-machine CelebA-HQ tables: large batches at low resolution, the
# learning rate raised from 128 up.
_PGGAN = {"networks.latent": 512, "schedule.batch": dict(PGGAN_BATCH), **every_lr(PGGAN_LR)}


def _phases(kimg: float) -> dict[str, float]:
    return {"schedule.fade_kimg": kimg, "schedule.stable_kimg": kimg}


PRESETS: dict[str, dict[str, Any]] = {
    "demo": {
        "schedule.max_res": 32,
        "data.synthetic_count": 6000,
        **_phases(6.0),
        "schedule.batch": every_res(8),
        **every_lr(every_res(2e-3)),
        "networks.latent": 64,
        "networks.fmap_base": 512,
        "networks.fmap_max": 64,
        "optim.ema_kimg": 2.0,
        "data.workers": 0,
        "run.snapshot_kimg": 20.0,
        "run.tick_kimg": 1.0,
    },
    "cifar10": {"schedule.max_res": 32, **_phases(300.0), **_PAPER},
    "celeba64": {"schedule.max_res": 64, **_phases(300.0), **_PAPER},
    "imagenet32": {"schedule.max_res": 32, **_phases(600.0), **_PAPER},
    "lsun64": {"schedule.max_res": 64, **_phases(600.0), **_PGGAN},
    "celebahq1024": {"schedule.max_res": 1024, **_phases(600.0), **_PGGAN,
                     "schedule.total_kimg": 12000.0},
    # The recipe nearest every quality target at 32 px (the README's quality section): the CPU
    # sizes of the default rule, the PCA path, R1 on the energy and an eight times faster
    # generator.
    "recipe32": {
        **rule(32, "cpu"),
        "networks.pca_path": True,
        "loss.energy_r1": 0.1,
        "optim.lr_generator": every_res(16e-3),
    },
}


def make_config(
    preset: str | None = AUTO, values: Mapping[str, Any] | None = None,
    device: str | None = None,
) -> Config:
    """A preset with `section.field` values set over it.

    `preset` None or "auto": the sizing rule for `schedule.max_res` (default 32) on `device`
    (default: the GPU if there is one). Values are typed (`keys.parse_value` reads text).
    """
    values = dict(values or {})
    name = preset or AUTO
    if name == AUTO:
        max_res = values.get("schedule.max_res", 32)
        check_resolution(max_res, "schedule.max_res")
        base = rule(max_res, device or default_device())
    elif name in PRESETS:
        base = PRESETS[name]
    else:
        raise UserError(f"preset {name!r} is unknown; choose one of {', '.join(names())}")
    cfg = replace(Config(preset=name), base | values)
    if "data.synthetic_count" not in values:  # a preset's default, within 1 GiB of pixels
        count = builtin_cap(cfg.data.synthetic_count, cfg.schedule.max_res)
        cfg = replace(cfg, {"data.synthetic_count": count})
    return cfg


def names() -> list[str]:
    """Every preset's name, `auto` last."""
    return [*PRESETS, AUTO]


# Fields that fix the networks' shapes: a snapshot's weights fit only its own.
SHAPE_FIELDS = ("networks.architecture", "schedule.max_res", "networks.latent",
                "networks.fmap_base", "networks.fmap_max", "networks.fmap_min",
                "networks.energy_width", "networks.mbstd_group", "networks.pca_path")
_OPTIONS = {"schedule.max_res": "--max-res", "networks.latent": "--latent",
            "networks.fmap_base": "--fmap-base", "networks.fmap_max": "--fmap-max"}


def check_same_networks(saved: Config, cfg: Config, snapshot: object) -> None:
    """A one-line error naming the first field of `cfg` that would build networks the weights
    of `snapshot`, trained with `saved`, do not fit."""
    for key in SHAPE_FIELDS:
        section, _, name = key.partition(".")
        old, new = (getattr(getattr(c, section), name) for c in (saved, cfg))
        if old != new:
            option = _OPTIONS.get(key)
            given, keep = ((f"{option} {new}", f"{option} {old}") if option
                           else (f"{key} {new}", f"--set {key}={str(old).lower()}"))
            raise UserError(
                f"{given} differs from {old}, which the run of {snapshot} was trained with; "
                f"its networks keep their shape: resume with {keep} (a dataset of a higher "
                "max_res serves as it is), or start a new run"
            )
