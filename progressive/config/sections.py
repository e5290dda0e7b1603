"""The run's configuration: frozen dataclasses, one per concern, checked when built.

Every field carries its help line and its bounds; a bad value is a one-line `UserError` naming
the field as `section.field`. Per-resolution tables (batch, learning rates) are dicts with a
value for every resolution from 4 to 1024.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from progressive.core.errors import UserError
from progressive.core.resolutions import ALL_RES, MAX_RES, MIN_RES, PCA_PATH_MAX_RES

NETWORKS = ("generator", "energy", "inference")  # the three trained networks, in step order
PRECISIONS = ("auto", "no", "bf16", "fp16")
TRACKERS = ("tensorboard", "wandb")


def every_res(value: float) -> dict[int, Any]:
    """A per-resolution table with `value` at every resolution."""
    return dict.fromkeys(ALL_RES, value)


def _field(default: Any, help: str, *, lo: float | None = None, hi: float | None = None,
           above: float | None = None, choices: tuple | None = None) -> Any:
    """A configuration field: its default, help line and bounds (lo <= v <= hi, v > above)."""
    meta = {"help": help, "lo": lo, "hi": hi, "above": above, "choices": choices}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


class Section:
    """Checks and coerces every field from its type hint and bounds after construction."""

    NAME: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = coerce(f"{self.NAME}.{f.name}", hints[f.name], getattr(self, f.name), f)
            object.__setattr__(self, f.name, value)
        self.check()

    def check(self) -> None:
        """Checks between fields of the section."""

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def _fail(name: str, value: Any, need: str) -> UserError:
    return UserError(f"{name} {value!r}: {need}")


def coerce(name: str, hint: Any, value: Any, f: dataclasses.Field | None = None) -> Any:
    """`value` as the field's type (JSON's int for a float, string table keys, a list for a
    tuple), or a one-line error naming the field."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return coerce(name, hint, value, f)
    meta = f.metadata if f is not None else {}
    if origin is dict:  # a per-resolution table
        if not isinstance(value, dict):
            raise _fail(name, value, "must be a table of every resolution")
        try:
            table = {int(r): v for r, v in value.items()}
        except (TypeError, ValueError):
            raise _fail(name, value, "its keys must be resolutions") from None
        if sorted(table) != list(ALL_RES):
            missing = sorted(set(ALL_RES) ^ set(table))
            raise _fail(name, value, f"needs exactly the resolutions {ALL_RES} (not {missing})")
        return {r: coerce(f"{name}[{r}]", args[1], v, f) for r, v in sorted(table.items())}
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise _fail(name, value, f"must be {len(args)} numbers")
        return tuple(coerce(name, a, v, f) for a, v in zip(args, value, strict=True))
    if hint is bool:
        if not isinstance(value, bool):
            raise _fail(name, value, "must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(name, value, "must be a whole number")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(name, value, "must be a number")
        value = float(value)
        if not math.isfinite(value):
            raise _fail(name, value, "must be a finite number")
    elif hint is str:
        if not isinstance(value, str):
            raise _fail(name, value, "must be a string")
    if meta.get("choices") and value not in meta["choices"]:
        raise _fail(name, value, f"must be one of {', '.join(meta['choices'])}")
    if meta.get("lo") is not None and value < meta["lo"]:
        raise _fail(name, value, f"must be {meta['lo']} or more")
    if meta.get("hi") is not None and value > meta["hi"]:
        raise _fail(name, value, f"must be {meta['hi']} or less")
    if meta.get("above") is not None and not value > meta["above"]:
        raise _fail(name, value, f"must be more than {meta['above']}")
    return value


def _check_res(name: str, res: int) -> None:
    if res < MIN_RES or res > MAX_RES or res & (res - 1):
        raise _fail(name, res, f"must be a power of two from {MIN_RES} to {MAX_RES}")


@dataclass(frozen=True)
class ScheduleConfig(Section):
    """The growth schedule: resolutions, images per phase, batch per resolution."""

    NAME: ClassVar[str] = "schedule"
    max_res: int = _field(32, "final resolution (a power of two from 4 to 1024)")
    start_res: int = _field(4, "first resolution")
    fade_kimg: float = _field(600.0, "thousands of real images per fade-in", lo=0)
    stable_kimg: float = _field(600.0, "thousands of real images per stable phase", lo=0)
    total_kimg: float | None = _field(None, "stop here; null: the end of the last stage", lo=0)
    batch: dict[int, int] = _field(every_res(16), "global batch size per resolution", lo=1)

    def check(self) -> None:
        _check_res("schedule.max_res", self.max_res)
        _check_res("schedule.start_res", self.start_res)
        if self.start_res > self.max_res:
            raise _fail("schedule.start_res", self.start_res,
                        f"is above schedule.max_res {self.max_res}")
        if self.fade_kimg <= 0 and self.stable_kimg <= 0:
            raise UserError("schedule.fade_kimg and schedule.stable_kimg cannot both be 0")


@dataclass(frozen=True)
class NetworksConfig(Section):
    """Sizes and kinds of the three networks."""

    NAME: ClassVar[str] = "networks"
    latent: int = _field(512, "latent dimension", lo=1)
    fmap_base: int = _field(16384, "channels at res: clamp(fmap_base / res, fmap_min, fmap_max)",
                            lo=1)
    fmap_max: int = _field(512, "widest layer", lo=1)
    fmap_min: int = _field(16, "narrowest layer", lo=1)
    mbstd_group: int = _field(0, "minibatch-stddev group in the energy model; 0: none", lo=0)
    energy_width: int = _field(1, "the energy model's widths over the generator's", lo=1)
    architecture: str = _field("progressive", "growing networks, or the DCGAN-sized reference "
                               "networks at max_res only", choices=("progressive", "reference"))
    pca_path: bool = _field(False, "generator and inference model start from the training "
                            "images' fixed principal components")

    def check(self) -> None:
        if self.fmap_min > self.fmap_max:
            raise _fail("networks.fmap_min", self.fmap_min,
                        f"must be at most networks.fmap_max {self.fmap_max}")


@dataclass(frozen=True)
class LossConfig(Section):
    """Weights of the divergence triangle's terms and the energy's negatives."""

    NAME: ClassVar[str] = "loss"
    rec: float = _field(1.0, "weight of the reconstruction term", lo=0)
    rec_scaling: str = _field("fixed", "fixed: summed error times (rec_ref_res/res)^2; sum: "
                              "plain sum", choices=("fixed", "sum"))
    rec_ref_res: int = _field(32, "resolution whose summed error the fixed scaling keeps", lo=1)
    kl: float = _field(1.0, "weight of KL(q(z|x) || N(0, I))", lo=0)
    kl_reduction: str = _field("mean", "KL averaged (mean) or summed (sum) over latent "
                               "dimensions", choices=("mean", "sum"))
    latent_nll: float = _field(0.1, "weight of the sleep phase, -log q(z|g(z))", lo=0)
    marginal_kl: float = _field(1.0, "weight of the batch codes' KL to the prior", lo=0)
    code_decorrelation: float = _field(1.0, "weight of the codes' squared covariances", lo=0)
    code_mmd: float = _field(0.0, "weight of the MMD between codes and prior draws", lo=0)
    energy: float = _field(1.0, "weight of mean E(g(z)) in the generator's objective", lo=0)
    energy_drift: float = _field(1e-3, "weight of mean E(x)^2 on the data", lo=0)
    energy_drift_fake: float = _field(1e-3, "weight of mean E(g(z))^2 on samples", lo=0)
    energy_r1: float = _field(0.0, "gamma of the gradient penalty on E at the data (R1)", lo=0)
    energy_outliers: float = _field(1.0, "weight ranking the data below random-scale noise",
                                    lo=0)
    langevin_steps: int = _field(0, "Langevin steps on E refining its negatives; 0: none", lo=0)
    langevin_step_size: float = _field(3e-2, "their step size s", above=0)
    langevin_noise: float = _field(0.0, "their temperature T (0: plain descent)", lo=0)


@dataclass(frozen=True)
class OptimConfig(Section):
    """Adam per network, learning rates per resolution, clipping and the averages."""

    NAME: ClassVar[str] = "optim"
    lr_generator: dict[int, float] = _field(every_res(1e-3), "the generator's learning rate "
                                            "per resolution", lo=0)
    lr_energy: dict[int, float] = _field(every_res(1e-3), "the energy model's", lo=0)
    lr_inference: dict[int, float] = _field(every_res(1e-3), "the inference model's", lo=0)
    betas: tuple[float, float] = _field((0.0, 0.99), "Adam betas", lo=0, hi=1)
    betas_energy: tuple[float, float] | None = _field(None, "the energy model's own betas; "
                                                      "null: betas", lo=0, hi=1)
    betas_inference: tuple[float, float] | None = _field(None, "the inference model's own "
                                                         "betas; null: betas", lo=0, hi=1)
    weight_decay_generator: float = _field(0.0, "the generator's Adam weight decay", lo=0)
    grad_clip: float = _field(100.0, "largest gradient norm per network", above=0)
    reset_optimizers: bool = _field(False, "fresh Adam state at each stage change")
    ema_kimg: float = _field(10.0, "half-life of the generator average, thousands of images",
                             lo=0)
    energy_ema_kimg: float | None = _field(None, "half-life of the energy model's average "
                                           "(used); 0: none; null: ema_kimg", lo=0)
    inference_ema_kimg: float | None = _field(None, "the same for the inference model", lo=0)

    def lr_tables(self) -> dict[str, dict[int, float]]:
        """Each network's learning rate per resolution."""
        return dict(zip(NETWORKS, (self.lr_generator, self.lr_energy, self.lr_inference),
                        strict=True))

    def betas_of(self, network: str) -> tuple[float, float]:
        own = {"energy": self.betas_energy, "inference": self.betas_inference}.get(network)
        return own or self.betas

    def half_lives(self) -> dict[str, float]:
        """Half-life of each network's average, thousands of images; 0: none kept."""
        def paired(v: float | None) -> float:
            return self.ema_kimg if v is None else v

        return {"generator": self.ema_kimg, "energy": paired(self.energy_ema_kimg),
                "inference": paired(self.inference_ema_kimg)}


@dataclass(frozen=True)
class DataConfig(Section):
    """The training images and how they are read."""

    NAME: ClassVar[str] = "data"
    path: str | None = _field(None, "dataset directory; null: the built-in synthetic data")
    synthetic_count: int = _field(20000, "images in the built-in dataset", lo=1)
    holdout: float = _field(0.1, "share held out for evaluation (the last images)", lo=0,
                            hi=0.5)
    workers: int = _field(2, "data loader processes per rank", lo=0)


@dataclass(frozen=True)
class RunConfig(Section):
    """Seed, precision, bookkeeping and evaluation."""

    NAME: ClassVar[str] = "run"
    seed: int = _field(0, "random seed", lo=0)
    mixed_precision: str = _field("auto", "auto: bf16 where native, else fp32",
                                  choices=PRECISIONS)
    tf32: bool = _field(False, "TensorFloat-32 for fp32 matmuls on NVIDIA GPUs")
    snapshot_kimg: float = _field(100.0, "snapshot interval, thousands of images", lo=0)
    keep_snapshots: int = _field(4, "newest snapshots kept besides stage ends; 0: all", lo=0)
    tick_kimg: float = _field(4.0, "statistics interval, thousands of images", lo=0)
    grid_size: int = _field(8, "samples per row and column of the grids", lo=1)
    eval_images: int = _field(500, "held-out images per stage-end evaluation; 0: none", lo=0)
    log_with: str | None = _field(None, "tracker for losses and grids; null: stats.jsonl only",
                                  choices=TRACKERS)
    process_timeout_s: float = _field(3600.0, "distributed process-group timeout, seconds",
                                      above=0)


SECTIONS: dict[str, type[Section]] = {
    s.NAME: s for s in (ScheduleConfig, NetworksConfig, LossConfig, OptimConfig, DataConfig,
                        RunConfig)
}


@dataclass(frozen=True)
class Config:
    """A whole configuration: the preset it started from and one object per concern."""

    preset: str = "auto"
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    networks: NetworksConfig = field(default_factory=NetworksConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        net, schedule = self.networks, self.schedule
        if net.architecture == "reference" and schedule.start_res != schedule.max_res:
            raise UserError(
                f"the reference networks do not grow: set schedule.start_res "
                f"{schedule.max_res} (= schedule.max_res)"
            )
        if net.pca_path and net.architecture == "reference":
            raise UserError("networks.pca_path is for the growing networks, not the reference "
                            "ones")
        path_values = 3 * min(schedule.max_res, PCA_PATH_MAX_RES) ** 2
        if net.pca_path and net.latent > path_values:
            raise UserError(
                f"networks.pca_path with networks.latent {net.latent} needs images of at least "
                f"that many values; at max_res {schedule.max_res} they have {path_values}: "
                "lower the latent"
            )

    def to_dict(self) -> dict:
        """The configuration as JSON-able nested dicts (config.json, state.json)."""
        return {"preset": self.preset,
                **{name: getattr(self, name).to_dict() for name in SECTIONS}}

    @property
    def total_images(self) -> int | None:
        """`schedule.total_kimg` in images, or None (the end of the last stage)."""
        total = self.schedule.total_kimg
        return round(total * 1000) if total else None


def from_dict(d: dict) -> Config:
    """A configuration from `Config.to_dict`'s form (every section complete or partial)."""
    unknown = set(d) - {"preset", *SECTIONS}
    if unknown:
        raise UserError(f"configuration: unknown section {sorted(unknown)[0]!r}; sections are "
                        f"{', '.join(SECTIONS)}")
    parts = {}
    for name, cls in SECTIONS.items():
        given = d.get(name) or {}
        if not isinstance(given, dict):
            raise UserError(f"configuration: section {name} must be a mapping of its fields")
        known = {f.name for f in dataclasses.fields(cls)}
        if bad := sorted(set(given) - known):
            raise UserError(f"{name}.{bad[0]} is not a configuration field")
        parts[name] = cls(**given)
    return Config(preset=str(d.get("preset") or "auto"), **parts)
