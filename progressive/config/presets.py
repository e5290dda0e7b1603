"""Training configurations: one preset per experiment of the paper, plus `demo`, plus `auto`
(no preset named): sizes derived from --max-res and the device (`progressive.config.sizing`).

A configuration is a plain JSON-able dict. `make_config` starts from a preset and applies
overrides; per-resolution tables (batch, learning rates) are keyed by resolution.
"""

from __future__ import annotations

import copy

from progressive.config.schedule import NETWORKS
from progressive.config.sizing import FMAP_MIN, builtin_cap, default_device, rule
from progressive.core.errors import UserError
from progressive.core.resolutions import ALL_RES, PCA_PATH_MAX_RES, check_resolution

# Everything a run needs; presets override parts of it.
BASE: dict = {
    "preset": None,
    "data": None,  # dataset directory; None: the built-in synthetic dataset
    "synthetic_count": 20000,  # images in the built-in dataset
    "max_res": 32,
    "start_res": 4,
    "fade_kimg": 600.0,
    "stable_kimg": 600.0,
    "total_kimg": None,  # None: the end of the last stage
    "batch": {r: 16 for r in ALL_RES},
    "lr": {
        "generator": {r: 1e-3 for r in ALL_RES},
        "energy": {r: 1e-3 for r in ALL_RES},
        "inference": {r: 1e-3 for r in ALL_RES},
    },
    "betas": [0.0, 0.99],
    "betas_inference": None,  # Adam betas of the inference model alone; None: `betas`
    "betas_energy": None,  # Adam betas of the energy model alone; None: `betas`
    "weight_decay_generator": 0.0,
    "grad_clip": 100.0,
    "reset_optimizers": False,  # fresh Adam state at each stage change
    "energy_every": 1,  # the energy model steps on every k-th batch; the other two on every one
    "energy_langevin": 0,  # Langevin steps on E refining the energy's negatives g(z); 0: none
    "energy_langevin_step": 3e-2,  # their step size s: x <- x - s grad E(x) + sqrt(2 s T) eps
    "energy_langevin_noise": 0.0,  # their temperature T (0: plain descent)
    "ema_kimg": 10.0,  # half-life of the generator average, thousands of images
    "energy_ema_kimg": None,  # half-life of the energy model's average (used); None: `ema_kimg`
    "inference_ema_kimg": None,  # the same for the inference model
    "latent": 512,
    "fmap_base": 16384,
    "fmap_max": 512,
    "fmap_min": FMAP_MIN,  # the narrowest any layer may be
    "mbstd_group": 0,  # minibatch-stddev layer in the energy model; 0 = none
    "inference_width": 1,  # the inference model's widths over the others'
    "energy_width": 1,  # the energy model's widths over the generator's
    "pca_path": False,  # generator and inference model on the training images' fixed PCA
    "inference_hidden": None,  # width of the inference model's dense layer; None: its 4x4 width
    "architecture": "progressive",  # or "reference": DCGAN-sized networks at max_res only
    "loss": {
        "rec": 1.0,  # weight of the reconstruction term
        "rec_scaling": "fixed",  # "fixed": summed error times (rec_ref_res/res)^2; "sum": plain sum
        "rec_ref_res": 32,
        "kl": 1.0,
        "kl_reduction": "mean",  # "mean" over latent dimensions (reference code) or "sum" (ELBO)
        "latent_nll": 0.1,  # lambda_lat on generated pairs
        "marginal_kl": 1.0,  # KL of the batch's aggregate posterior to N(0, I)
        "code_decorrelation": 1.0,  # squared covariances between the codes' dimensions
        "code_center": 0.0,  # squared length of the codes' mean
        "code_mmd": 0.0,  # MMD between the batch's codes and prior samples
        "energy": 1.0,  # weight of mean E(g(z)) in the generator's objective
        "energy_drift": 1e-3,  # mean E(x)^2 penalty that keeps energies near zero
        "energy_drift_fake": 1e-3,  # the same penalty on generated images' energies
        "energy_center": 0.0,  # (midpoint of mean E(x) and mean E(g(z)))^2: pins E's constant
        "energy_recenter": 0.0,  # share of that midpoint taken off E's output bias per step
        "energy_r1": 0.0,  # gamma of gamma/2 * mean |grad_x E(x)|^2 at the data (R1)
        "energy_outliers": 1.0,  # weight ranking each x below a random-scale noise image
    },
    "seed": 0,
    "mixed_precision": "auto",  # bf16 where the device runs it natively, else fp32
    "tf32": False,  # TensorFloat-32 for fp32 matmuls and convolutions on NVIDIA GPUs
    "workers": 2,
    "snapshot_kimg": 100.0,
    "keep_snapshots": 4,  # the newest kept besides the start and every stage end; 0: all
    "tick_kimg": 4.0,  # stats and progress-bar granularity
    "grid_size": 8,  # samples per row/column in grids
    "holdout": 0.1,  # fraction of the dataset held out (its last images by index) for evaluation
    "eval_images": 500,  # held-out images evaluated at each stage end (at most); 0: none
    # Seconds a collective waits for the slowest process before the run fails: the main
    # process's work alone at a 1024 px stage end (a snapshot of about 2 GB written, synced
    # and read back, an 8192 px grid, the evaluation) takes minutes on a slow shared disk.
    "process_timeout_s": 3600.0,
}


def _table(values: dict[int, float], default: float) -> dict[int, float]:
    return {r: values.get(r, default) for r in ALL_RES}


def _lrs(generator: dict | float, energy: dict | float, inference: dict | float) -> dict:
    def t(v: dict | float) -> dict[int, float]:
        return _table(v, 0.0) if isinstance(v, dict) else {r: v for r in ALL_RES}

    return {"generator": t(generator), "energy": t(energy), "inference": t(inference)}


# Progressive-GAN's per-resolution tables (single-machine CelebA-HQ): large batches at low
# resolution, learning rate raised from 128 up.
_PGGAN_BATCH = {4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4, 1024: 4}
_PGGAN_LR = {
    4: 1e-3,
    8: 1e-3,
    16: 1e-3,
    32: 1e-3,
    64: 1e-3,
    128: 1.5e-3,
    256: 2e-3,
    512: 3e-3,
    1024: 3e-3,
}

# The authors' CIFAR-10 code: Adam(0.5, 0.999), E 1e-4, G and I 3e-4, G weight decay 5e-4,
# batch 100, latent 100, clip 100, summed reconstruction error, energy used raw. Widths
# 1024 / 512 (256 channels at 4x4 down to 32 at 32x32) cost about what the authors' DCGAN-sized
# networks cost per image (3.8 against 4.1 GFLOP per training image at 32x32; 16384 / 512 costs
# 255), so a run sees as many images in the same time.
_PAPER = {
    "fmap_base": 1024,
    "fmap_max": 512,
    "batch": {r: 100 for r in ALL_RES},
    "lr": _lrs(3e-4, 1e-4, 3e-4),
    "betas": [0.5, 0.999],
    "weight_decay_generator": 5e-4,
    "grad_clip": 100.0,
    "latent": 100,
    "loss": {
        "rec_scaling": "sum",
        "energy_drift": 0.0,
        "energy_drift_fake": 0.0,
        "marginal_kl": 0.0,
        "code_decorrelation": 0.0,
        "energy_outliers": 0.0,
    },
}

PRESETS: dict[str, dict] = {
    "demo": {
        "max_res": 32,
        "synthetic_count": 6000,
        "fade_kimg": 6.0,
        "stable_kimg": 6.0,
        "batch": {r: 8 for r in ALL_RES},
        "lr": _lrs(2e-3, 2e-3, 2e-3),
        "latent": 64,
        "fmap_base": 512,
        "fmap_max": 64,
        "ema_kimg": 2.0,
        "workers": 0,
        "snapshot_kimg": 20.0,
        "tick_kimg": 1.0,
    },
    "cifar10": {"max_res": 32, "fade_kimg": 300.0, "stable_kimg": 300.0, **_PAPER},
    "celeba64": {"max_res": 64, "fade_kimg": 300.0, "stable_kimg": 300.0, **_PAPER},
    "imagenet32": {"max_res": 32, "fade_kimg": 600.0, "stable_kimg": 600.0, **_PAPER},
    "lsun64": {
        "max_res": 64,
        "fade_kimg": 600.0,
        "stable_kimg": 600.0,
        "latent": 512,
        "batch": _table(_PGGAN_BATCH, 32),
        "lr": _lrs(_PGGAN_LR, _PGGAN_LR, _PGGAN_LR),
    },
    "celebahq1024": {
        "max_res": 1024,
        "fade_kimg": 600.0,
        "stable_kimg": 600.0,
        "latent": 512,
        "batch": _table(_PGGAN_BATCH, 4),
        "lr": _lrs(_PGGAN_LR, _PGGAN_LR, _PGGAN_LR),
        "total_kimg": 12000.0,
    },
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("batch",):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


AUTO = "auto"  # the preset name of a run that named none


def make_config(preset: str | None = "demo", device: str | None = None, **overrides) -> dict:
    """Resolve a configuration: BASE, then the preset, then `overrides` (None means unset).

    `preset` None or "auto": the sizing rule for `max_res` (default 32) on `device` (default:
    the GPU if there is one). `batch` may be an int (every resolution) or a table; `lr` may be
    a float (every network and resolution) or a dict of some networks' rates (each a float or
    a table); `loss` a partial dict of loss weights.
    """
    if preset is None or preset == AUTO:
        max_res = overrides.get("max_res") or 32
        check_resolution(max_res, "--max-res")
        cfg = _merge(_merge(BASE, rule(max_res, device or default_device())), {"preset": AUTO})
    elif preset not in PRESETS:
        names = ", ".join([*PRESETS, AUTO])
        raise UserError(f"--preset {preset!r} is unknown; choose one of {names}")
    else:
        cfg = _merge(_merge(BASE, PRESETS[preset]), {"preset": preset})
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in cfg:
            raise UserError(f"unknown configuration key {key!r}")
        if key == "batch" and not isinstance(value, dict):
            value = {r: int(value) for r in ALL_RES}
        if key == "lr":  # one rate for every network, or some networks' (floats or tables)
            rates = value if isinstance(value, dict) else dict.fromkeys(NETWORKS, value)
            value = {n: v if isinstance(v, dict) else {r: float(v) for r in ALL_RES}
                     for n, v in rates.items()}
        cfg = _merge(cfg, {key: value})
    cfg = normalize(cfg)
    if overrides.get("synthetic_count") is None:  # a preset's default, within 1 GiB of pixels
        cfg["synthetic_count"] = builtin_cap(cfg["synthetic_count"], cfg["max_res"])
    return cfg


def normalize(cfg: dict) -> dict:
    """Validate and make per-resolution tables int-keyed (JSON turns them into strings).

    A configuration saved before a key existed gets the behaviour it was trained with: no
    width floor, no drift penalty on generated energies, no marginal KL, no decorrelation of
    the codes, no average of the inference or energy model, no outliers ranked above the data,
    and BASE's value for every other missing key."""
    cfg = copy.deepcopy(cfg)
    cfg.setdefault("fmap_min", 1)
    cfg.setdefault("loss", {}).setdefault("energy_drift_fake", 0.0)  # runs before it had none
    cfg["loss"].setdefault("marginal_kl", 0.0)  # nor the marginal KL
    cfg["loss"].setdefault("code_decorrelation", 0.0)  # nor the decorrelation
    cfg["loss"].setdefault("energy_outliers", 0.0)  # nor the outliers
    cfg.setdefault("inference_ema_kimg", 0.0)  # nor the inference model's average
    cfg.setdefault("energy_ema_kimg", 0.0)  # nor, before that became a default, the energy's
    for key, value in BASE.items():
        cfg.setdefault(key, copy.deepcopy(value))
    for key, value in BASE["loss"].items():
        cfg["loss"].setdefault(key, value)
    for key in ("energy_ema_kimg", "inference_ema_kimg"):
        if cfg[key] is None:  # paired with the generator average
            cfg[key] = cfg["ema_kimg"]
    cfg["batch"] = {int(r): int(b) for r, b in cfg["batch"].items()}
    cfg["lr"] = {n: {int(r): float(v) for r, v in t.items()} for n, t in cfg["lr"].items()}
    check_resolution(cfg["max_res"], "--max-res")
    check_resolution(cfg["start_res"], "--start-res")
    if cfg["start_res"] > cfg["max_res"]:
        raise UserError(f"--start-res {cfg['start_res']} is above --max-res {cfg['max_res']}")
    if cfg["loss"]["rec_scaling"] not in ("fixed", "sum"):
        raise UserError("loss rec_scaling must be 'fixed' or 'sum'")
    if cfg["loss"]["kl_reduction"] not in ("mean", "sum"):
        raise UserError("loss kl_reduction must be 'mean' or 'sum'")
    if cfg["architecture"] not in ("progressive", "reference"):
        raise UserError("architecture must be 'progressive' or 'reference'")
    if cfg["architecture"] == "reference" and cfg["start_res"] != cfg["max_res"]:
        raise UserError(
            f"the reference networks do not grow: give --start-res {cfg['max_res']} "
            f"(= --max-res)"
        )
    if cfg["mixed_precision"] not in ("auto", "no", "bf16", "fp16"):
        raise UserError("--mixed-precision must be auto, no, bf16 or fp16")
    if not 1 <= cfg["fmap_min"] <= cfg["fmap_max"]:
        raise UserError(
            f"fmap_min {cfg['fmap_min']} must be from 1 to --fmap-max {cfg['fmap_max']}"
        )
    if not isinstance(cfg["energy_every"], int) or cfg["energy_every"] < 1:
        raise UserError(f"energy_every {cfg['energy_every']!r} must be a whole number >= 1")
    if not isinstance(cfg["energy_langevin"], int) or cfg["energy_langevin"] < 0:
        raise UserError(f"--energy-langevin {cfg['energy_langevin']!r} must be a whole number >= 0")
    if not cfg["energy_langevin_step"] > 0:
        raise UserError(f"--energy-langevin-step {cfg['energy_langevin_step']!r} must be > 0")
    if not cfg["energy_langevin_noise"] >= 0:
        raise UserError(f"--energy-langevin-noise {cfg['energy_langevin_noise']!r} must be >= 0")
    for key in ("inference_width", "energy_width"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise UserError(f"{key} {cfg[key]!r} must be a whole number >= 1")
    if not isinstance(cfg["pca_path"], bool):
        raise UserError(f"pca_path {cfg['pca_path']!r} must be true or false")
    if cfg["pca_path"] and cfg["architecture"] == "reference":
        raise UserError("--pca-path is for the growing networks, not the reference ones")
    path_values = 3 * min(cfg["max_res"], PCA_PATH_MAX_RES) ** 2
    if cfg["pca_path"] and cfg["latent"] > path_values:
        raise UserError(
            f"--pca-path with --latent {cfg['latent']} needs images of at least that many "
            f"values; at --max-res {cfg['max_res']} they have {path_values}: lower --latent"
        )
    hidden = cfg["inference_hidden"]
    if hidden is not None and (not isinstance(hidden, int) or hidden < 1):
        raise UserError(f"inference_hidden {hidden!r} must be a whole number >= 1 (or null)")
    for key in ("energy_ema_kimg", "inference_ema_kimg"):
        if not isinstance(cfg[key], (int, float)) or cfg[key] < 0:
            raise UserError(f"{key} {cfg[key]!r} must be a number >= 0")
    keep = cfg["keep_snapshots"]
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 0:
        raise UserError(f"--keep-snapshots {keep!r} must be a whole number >= 0 (0 keeps all)")
    timeout = cfg["process_timeout_s"]
    if not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        raise UserError(f"process_timeout_s {timeout!r} must be a number of seconds above 0")
    if not 0 <= cfg["holdout"] <= 0.5:
        raise UserError(f"--holdout {cfg['holdout']} must be from 0 to 0.5")
    for name in ("fade_kimg", "stable_kimg"):
        if cfg[name] < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0")
    if cfg["stable_kimg"] <= 0 and cfg["fade_kimg"] <= 0:
        raise UserError("--fade-kimg and --stable-kimg cannot both be 0")
    return cfg


# Settings that fix the networks' shapes: a snapshot's weights fit only its own.
SHAPE_KEYS = ("architecture", "max_res", "latent", "fmap_base", "fmap_max", "fmap_min",
              "energy_width", "inference_width", "inference_hidden", "mbstd_group", "pca_path")


def check_same_networks(saved: dict, cfg: dict, snapshot: object) -> None:
    """A one-line error naming the first setting of `cfg` that would build networks the
    weights of `snapshot`, trained with `saved`, do not fit."""
    for key in SHAPE_KEYS:
        if saved.get(key) != cfg.get(key):
            option = "--" + key.replace("_", "-")
            raise UserError(
                f"{option} {cfg.get(key)} differs from {saved.get(key)}, which the run of "
                f"{snapshot} was trained with; its networks keep their shape: resume with "
                f"{option} {saved.get(key)} (a dataset of a higher max_res serves as it is), or "
                "start a new run"
            )
