"""The default configuration when no preset is named: sizes that follow from --max-res and the
device, so every max-res from 4 to 1024 trains as typed.

The rule (also in the README and in `--dry-run` under "rule"):
- widths: channels(res) = clamp(fmap_base / res, fmap_min, fmap_max), never below FMAP_MIN.
  GPU: progressive GAN's 16384 / 512 (512 channels to 32 px, 16 at 1024).
  CPU: 512 / 64 up to 32 px (the demo's), 1024 / 64 above (64 channels to 16 px, 32 at 32,
  16 from 64 on).
- latent: GPU 512 (the paper's CelebA-HQ size); CPU 64 up to 64 px, 128 above.
- batch: GPU progressive GAN's table (128 to 16 px, halved per stage to 4 at 512 and 1024);
  CPU 8 to 128 px and 4 above: at a fixed number of images shown, four times the steps of
  batch 32 gave better reconstructions, samples and energies (bench/bench_quality.py).
- learning rates (all three networks): GPU progressive GAN's table (1e-3 to 64 px, 1.5e-3 at
  128, 2e-3 at 256, 3e-3 at 512 and 1024); CPU 2e-3 at every resolution (the demo's).
- images per phase: GPU 600k per fade-in and per stable phase (progressive GAN); CPU 6k (demo).
- built-in data: 6,000 images up to 64 px, 6000 * (64 / max_res)^2 above with at least 200
  (1,500 at 128, 375 at 256, 200 at 512 and 1024); stored raw up to 256 px, JPEG (quality 95)
  above.
"""

from __future__ import annotations

import os

import torch

from progressive.core.resolutions import ALL_RES

FMAP_MIN = 16  # no layer of any network is narrower than this (progressive GAN's 1024 width)
BUILTIN_MAX_COUNT = 6000
BUILTIN_MIN_COUNT = 200
BUILTIN_MAX_BYTES = 2**30  # pixels at max_res: 20,000 images at 1024 px took 11 GB, 15 minutes

RULE_TEXT = (
    "no preset named: widths clamp(fmap_base/res, 16, fmap_max); "
    "GPU: fmap 16384/512, latent 512, progressive GAN's batch and lr tables, 600k images per "
    "phase; CPU: fmap 512/64 to 32 px and 1024/64 above, latent 64 to 64 px and 128 above, "
    "batch 8 to 128 px and 4 above, lr 2e-3, 6k images per phase; built-in data "
    "6000 images to 64 px, 6000*(64/max_res)^2 (at least 200) above, raw to 256 px, JPEG above"
)

PGGAN_BATCH = {4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4, 1024: 4}
PGGAN_LR = {4: 1e-3, 8: 1e-3, 16: 1e-3, 32: 1e-3, 64: 1e-3, 128: 1.5e-3, 256: 2e-3,
            512: 3e-3, 1024: 3e-3}


def default_device() -> str:
    """'cuda' when training would run on a GPU, else 'cpu' (accelerate's choice)."""
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return "cuda" if torch.cuda.is_available() and not use_cpu else "cpu"


def builtin_count(max_res: int) -> int:
    """Images in the built-in synthetic dataset rendered for `max_res`."""
    scaled = BUILTIN_MAX_COUNT * (64 / max_res) ** 2
    return int(min(BUILTIN_MAX_COUNT, max(BUILTIN_MIN_COUNT, scaled)))


def builtin_cap(count: int, max_res: int) -> int:
    """`count` built-in images, fewer where they would hold more than BUILTIN_MAX_BYTES of
    pixels at `max_res` (341 at 1024 px), never under BUILTIN_MIN_COUNT."""
    return min(count, max(BUILTIN_MIN_COUNT, BUILTIN_MAX_BYTES // (3 * max_res * max_res)))


def builtin_encoding(max_res: int) -> str:
    """Raw pixels up to 256 px (fast to read), JPEG above (a fifth of PNG's size there)."""
    return "compact" if max_res > 256 else "auto"


def rule(max_res: int, device: str) -> dict:
    """Configuration values (`section.field`) for `max_res` on `device` ('cpu' or 'cuda')."""
    common = {
        "schedule.max_res": max_res,
        "networks.fmap_min": FMAP_MIN,
        "run.mixed_precision": "auto",
        "data.synthetic_count": builtin_count(max_res),
    }
    if device == "cuda":
        return common | {
            "networks.fmap_base": 16384,
            "networks.fmap_max": 512,
            "networks.latent": 512,
            "schedule.batch": dict(PGGAN_BATCH),
            **every_lr(PGGAN_LR),
            "schedule.fade_kimg": 600.0,
            "schedule.stable_kimg": 600.0,
        }
    return common | {
        "networks.fmap_base": 512 if max_res <= 32 else 1024,
        "networks.fmap_max": 64,
        "networks.latent": 64 if max_res <= 64 else 128,
        "schedule.batch": {r: 8 if r <= 128 else 4 for r in ALL_RES},
        **every_lr(dict.fromkeys(ALL_RES, 2e-3)),
        "schedule.fade_kimg": 6.0,
        "schedule.stable_kimg": 6.0,
        "optim.ema_kimg": 2.0,
        "data.workers": 0,
        "run.snapshot_kimg": 20.0,
        "run.tick_kimg": 1.0,
    }


def every_lr(table: dict[int, float]) -> dict[str, dict[int, float]]:
    """The same per-resolution learning rate for all three networks, as configuration values."""
    return {"optim.lr_generator": dict(table), "optim.lr_energy": dict(table),
            "optim.lr_inference": dict(table)}
