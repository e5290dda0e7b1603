"""Saved configurations of every release read as the typed configuration they were trained with.

Release 0.1.0 saved one flat dict (config.json and each snapshot's state.json); runs from
before a setting existed get the behaviour they were trained with, and a setting since retired
is read when it is at its neutral value and refused otherwise. Later releases save
`Config.to_dict()`.
"""

from __future__ import annotations

from typing import Any

from progressive.config.sections import NETWORKS, Config, from_dict
from progressive.core.errors import UserError
from progressive.core.resolutions import ALL_RES

# 0.1.0's defaults (its presets.BASE): a key a saved run lacks takes this value, unless
# _BEFORE_IT_EXISTED says what the run was trained with.
_DEFAULTS_0_1: dict[str, Any] = {
    "preset": None, "data": None, "synthetic_count": 20000, "max_res": 32, "start_res": 4,
    "fade_kimg": 600.0, "stable_kimg": 600.0, "total_kimg": None,
    "batch": dict.fromkeys(ALL_RES, 16),
    "lr": {n: dict.fromkeys(ALL_RES, 1e-3) for n in NETWORKS},
    "betas": [0.0, 0.99], "betas_inference": None, "betas_energy": None,
    "weight_decay_generator": 0.0, "grad_clip": 100.0, "reset_optimizers": False,
    "energy_langevin": 0, "energy_langevin_step": 3e-2, "energy_langevin_noise": 0.0,
    "ema_kimg": 10.0, "energy_ema_kimg": None, "inference_ema_kimg": None,
    "latent": 512, "fmap_base": 16384, "fmap_max": 512, "fmap_min": 16, "mbstd_group": 0,
    "energy_width": 1, "pca_path": False, "architecture": "progressive",
    "seed": 0, "mixed_precision": "auto", "tf32": False, "workers": 2, "snapshot_kimg": 100.0,
    "tick_kimg": 4.0, "grid_size": 8, "holdout": 0.1, "eval_images": 500,
}
_LOSS_DEFAULTS_0_1: dict[str, Any] = {
    "rec": 1.0, "rec_scaling": "fixed", "rec_ref_res": 32, "kl": 1.0, "kl_reduction": "mean",
    "latent_nll": 0.1, "marginal_kl": 1.0, "code_decorrelation": 1.0, "code_mmd": 0.0,
    "energy": 1.0, "energy_drift": 1e-3, "energy_drift_fake": 1e-3, "energy_r1": 0.0,
    "energy_outliers": 1.0,
}
# Runs saved before these settings existed trained without them.
_BEFORE_IT_EXISTED = {"fmap_min": 1, "inference_ema_kimg": 0.0, "energy_ema_kimg": 0.0}
_LOSS_BEFORE_IT_EXISTED = {"energy_drift_fake": 0.0, "marginal_kl": 0.0,
                           "code_decorrelation": 0.0, "energy_outliers": 0.0}

# Settings tried and retired: the value that leaves training as it is now, and the last
# release that trained with it.
RETIRED: dict[str, tuple[Any, str]] = {
    "energy_center": (0.0, "0.1.0"),
    "energy_recenter": (0.0, "0.1.0"),
    "code_center": (0.0, "0.1.0"),
    "energy_every": (1, "0.1.0"),
    "inference_width": (1, "0.1.0"),
    "inference_hidden": (None, "0.1.0"),
    "energy_noise": (0.0, "0.1.0"),
    "energy_blocks": (0.0, "0.1.0"),
    "upsample": ("nearest", "0.1.0"),
}

# 0.1.0's flat keys as `section.field` (the learning rates and loss weights apart).
_FLAT = {
    "data": "data.path", "synthetic_count": "data.synthetic_count", "holdout": "data.holdout",
    "workers": "data.workers",
    **{k: f"schedule.{k}" for k in ("max_res", "start_res", "fade_kimg", "stable_kimg",
                                    "total_kimg", "batch")},
    **{k: f"networks.{k}" for k in ("latent", "fmap_base", "fmap_max", "fmap_min",
                                    "mbstd_group", "energy_width", "pca_path",
                                    "architecture")},
    **{k: f"optim.{k}" for k in ("betas", "betas_energy", "betas_inference",
                                 "weight_decay_generator", "grad_clip", "reset_optimizers",
                                 "ema_kimg", "energy_ema_kimg", "inference_ema_kimg")},
    "energy_langevin": "loss.langevin_steps", "energy_langevin_step": "loss.langevin_step_size",
    "energy_langevin_noise": "loss.langevin_noise",
    **{k: f"run.{k}" for k in ("seed", "mixed_precision", "tf32", "snapshot_kimg",
                               "tick_kimg", "grid_size", "eval_images")},
}
_LR_FIELDS = {"generator": "lr_generator", "energy": "lr_energy", "inference": "lr_inference"}


def migrate(d: dict) -> Config:
    """The typed configuration of a saved config.json (any release), or a one-line error."""
    if not isinstance(d, dict):
        raise UserError("configuration: not a mapping of settings")
    if isinstance(d.get("schedule"), dict):
        return from_dict(d)
    return from_dict(_sections_of_0_1(d))


def _sections_of_0_1(flat: dict) -> dict:
    """0.1.0's flat dict as sections, with the defaults it was trained with."""
    flat = dict(flat)
    loss = dict(flat.pop("loss", None) or {})
    for where in (flat, loss):
        for key in [k for k in where if k in RETIRED]:
            neutral, release = RETIRED[key]
            if where[key] != neutral:
                raise UserError(
                    f"{key} {where[key]!r}: a retired setting (last in progressive {release}); "
                    "use that release for this run"
                )
            del where[key]
    flat = {**_DEFAULTS_0_1, **_BEFORE_IT_EXISTED, **flat}
    loss = {**_LOSS_DEFAULTS_0_1, **_LOSS_BEFORE_IT_EXISTED, **loss}
    sections: dict[str, dict] = {"loss": {}}
    lr = flat.pop("lr")
    if not isinstance(lr, dict) or set(lr) != set(_LR_FIELDS):
        raise UserError(f"configuration: lr must give a table for each of {', '.join(NETWORKS)}")
    for name, table in lr.items():
        sections.setdefault("optim", {})[_LR_FIELDS[name]] = table
    preset = flat.pop("preset")
    for key, value in flat.items():
        if key not in _FLAT:
            raise UserError(f"configuration: unknown setting {key!r}")
        section, _, name = _FLAT[key].partition(".")
        sections.setdefault(section, {})[name] = value
    sections["loss"].update(loss)
    return {"preset": preset or "auto", **sections}


def values_0_1(partial: dict) -> dict[str, Any]:
    """Release 0.1.0's overrides (flat keys, `loss` a dict of weights, `lr` a rate or a dict
    of some networks' rates or tables, `batch` a number or a table) as `section.field`
    values, for records written in its terms."""
    partial = dict(partial)
    values = {f"loss.{k}": v for k, v in (partial.pop("loss", None) or {}).items()}
    lr = partial.pop("lr", None)
    if lr is not None:
        rates = lr if isinstance(lr, dict) else dict.fromkeys(NETWORKS, lr)
        for name, rate in rates.items():
            table = rate if isinstance(rate, dict) else dict.fromkeys(ALL_RES, rate)
            values[f"optim.{_LR_FIELDS[name]}"] = table
    if isinstance(partial.get("batch"), int):
        partial["batch"] = dict.fromkeys(ALL_RES, partial["batch"])
    for key, value in partial.items():
        if key not in _FLAT:
            raise UserError(f"configuration: unknown setting {key!r}")
        values[_FLAT[key]] = value
    return values
