"""Quality of the triangle per configuration: one row per configuration, equal budgets.

    python bench/bench_quality.py --train data/celeba32-train --heldout data/celeba32-test \\
        --ood cifar=data/cifar32-test --ood ffhq=data/ffhq32 --kimg 40 --out checkpoints/quality

Every configuration trains at 32x32 from the start (no growing: the comparison is between
optimisation, loss weighting and network choices, not schedules) for the same number of images
shown (`--kimg`), on one CPU thread, then is evaluated on the held-out set with the figures of
`progressive evaluate --metrics recon,recon-synth,latent-recovery,energy-auroc,diversity,swd`.
Configurations whose name ends in `@time` get equal wall time instead: their images shown are
`--kimg` times the ratio of their training speed to the median speed of the other rows, all
measured in one calibration pass at the start of the same run (best of three timings of twelve
steps on random images). Runs
already finished under `--out` are not retrained, and a row already evaluated on the same final
snapshot and settings is read back. Writes a table to stdout and `quality.json` under `--out`
and `bench/results/`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

from machine import describe  # noqa: E402

from progressive.config.migrate import values_0_1  # noqa: E402
from progressive.config.presets import PRESETS, make_config  # noqa: E402
from progressive.config.schedule import Schedule  # noqa: E402
from progressive.run import loading  # noqa: E402
from progressive.run.folder import list_snapshots  # noqa: E402
from progressive.train.loop import train  # noqa: E402
from progressive.train.trainer import Trainer  # noqa: E402
from progressive.use.evaluate import evaluate  # noqa: E402

PAPER_OPT = {"lr": {"generator": 3e-4, "energy": 1e-4, "inference": 3e-4}, "betas": [0.5, 0.999]}

# Every term but the reconstruction off: the triangle's two networks as a plain autoencoder.
AUTOENCODER_LOSS = {"kl": 0.0, "latent_nll": 0.0, "marginal_kl": 0.0, "code_decorrelation": 0.0,
                    "energy": 0.0}

# name: overrides of the demo preset (the networks the demo trains on two cores).
CONFIGS: dict[str, dict] = {
    "demo": {},
    # The energy's step made calmer (its ranking of other sets swings from one step to the next,
    # bench_energy_steps.py): Adam momentum for the energy model alone (the paper's beta1 0.5),
    # or a quarter of its learning rate. Judged, like every row now, through its average.
    "demo+energy-momentum": {"betas_energy": [0.5, 0.99]},
    "demo+energy-lr-5e-4": {"lr": {"energy": 5e-4}},
    # The 16-dimensional latent (its raw energy had ranked other sets best), through the average.
    "demo+latent-16+energy-average": {"latent": 16},
    # ... with the sleep phase (the NLL of z under q(z|g(z))) weighted 1 instead of 0.1: the
    # term that trains the inference model to invert the generator.
    "demo+latent-16+sleep-1": {"latent": 16, "loss": {"latent_nll": 1.0}},
    "demo+latent-16+sleep-2": {"latent": 16, "loss": {"latent_nll": 2.0}},
    "demo+latent-32+sleep-1": {"latent": 32, "loss": {"latent_nll": 1.0}},
    # The demo's 64 dimensions with the sleep phase weighted 1 (measured before, without the
    # decorrelation and the averages, as demo+sleep-1).
    "demo+latent-64+sleep-1": {"loss": {"latent_nll": 1.0}},
    # The inference model's learning rate 4e-3 (measured before through the raw energy, whose
    # one-step ranking had counted against it), through the energy's average.
    "demo+inference-lr-4e-3+energy-average": {"lr": {"inference": 4e-3}},
    # The energy model's learning rate halved, likewise measured again through the average.
    "demo+energy-lr-1e-3+energy-average": {"lr": {"energy": 1e-3}},
    # The drift penalty 3e-3 on both sides, likewise measured again through the average.
    "demo+drift-3e-3+energy-average": {"loss": {"energy_drift": 3e-3, "energy_drift_fake": 3e-3}},
    # Bounds, not candidates: what the same two networks reconstruct in the same budget as a
    # plain autoencoder (the squared error alone), and the triangle with the energy's pull on
    # the generator removed (the energy model still trains, against those samples).
    "demo+autoencoder": {"loss": AUTOENCODER_LOSS},
    "demo+no-energy-pull": {"loss": {"energy": 0.0}},
    # Probes of the autoencoder bound: Adam momentum (beta1 0.9) for both of its networks; then
    # the same momentum for the generator and inference model of the triangle (the energy model
    # keeps beta1 0).
    "demo+autoencoder+momentum": {"betas": [0.9, 0.99], "loss": AUTOENCODER_LOSS},
    "demo+momentum-generator-inference": {"betas": [0.9, 0.99], "betas_energy": [0.0, 0.99]},
    # A wider energy model (16 channels at 32x32 in the demo): more than colour and contrast to
    # rank images by.
    "demo+energy-width-2": {"energy_width": 2},
    "demo+energy-width-4": {"energy_width": 4},
    # The generator and inference model on a fixed PCA of the training images, learning what
    # it misses: reconstruction starts at the latent-sized PCA's instead of the mean image's.
    "demo+pca-path": {"pca_path": True},
    "demo+pca-path+energy-width-4": {"pca_path": True, "energy_width": 4},
    "demo+pca-path+autoencoder": {"pca_path": True, "loss": AUTOENCODER_LOSS},
    "demo+pca-path+energy-r1-0.1": {"pca_path": True, "loss": {"energy_r1": 0.1}},
    "demo+pca-path+generator-lr-5e-4": {"pca_path": True, "lr": {"generator": 5e-4}},
    "demo+pca-path+energy-r1-0.01": {"pca_path": True, "loss": {"energy_r1": 0.01}},
    "demo+pca-path+energy-r1-0.03": {"pca_path": True, "loss": {"energy_r1": 0.03}},
    "demo+pca-path+energy-r1-1": {"pca_path": True, "loss": {"energy_r1": 1.0}},
    "demo+pca-path+energy-r1-0.1+energy-width-4": {
        "pca_path": True, "loss": {"energy_r1": 0.1}, "energy_width": 4
    },
    # The two recipes together: latent recovery and the energy's ranking at once.
    "demo+latent-16+sleep-2+energy-width-4": {
        "latent": 16, "loss": {"latent_nll": 2.0}, "energy_width": 4
    },
    # A zero-centred gradient penalty on the energy at the data (R1): the demo's energy is
    # steep everywhere (|grad_x E|^2 about 3,000 at held-out faces, CIFAR images and samples
    # alike), so the data are points on a slope rather than minima.
    "demo+energy-r1-0.01": {"loss": {"energy_r1": 0.01}},
    "demo+energy-r1-0.1": {"loss": {"energy_r1": 0.1}},
    "demo+energy-r1-1": {"loss": {"energy_r1": 1.0}},
    "demo+energy-r1-10": {"loss": {"energy_r1": 10.0}},
    # The energy's negatives refined by five steps of Langevin descent on the energy itself
    # (the default step 0.03: pixels move 0.05 to 0.06 RMS with the demo's networks, 0.13 with
    # the PCA path, medians over training), so its contrastive step also raises low-energy
    # regions the generator does not visit.
    "demo+energy-langevin-5": {"energy_langevin": 5},
    "demo+pca-path+energy-r1-0.1+energy-langevin-5": {
        "pca_path": True, "loss": {"energy_r1": 0.1}, "energy_langevin": 5,
    },
    # The chain's length and step size, with the PCA path:
    "demo+pca-path+energy-r1-0.1+energy-langevin-2": {
        "pca_path": True, "loss": {"energy_r1": 0.1}, "energy_langevin": 2,
    },
    "demo+pca-path+energy-r1-0.1+energy-langevin-15": {
        "pca_path": True, "loss": {"energy_r1": 0.1}, "energy_langevin": 15,
    },
    "demo+pca-path+energy-r1-0.1+energy-langevin-5-step-0.01": {
        "pca_path": True, "loss": {"energy_r1": 0.1}, "energy_langevin": 5,
        "energy_langevin_step": 0.01,
    },
    "demo+pca-path+energy-r1-0.1+energy-langevin-5-step-0.1": {
        "pca_path": True, "loss": {"energy_r1": 0.1}, "energy_langevin": 5,
        "energy_langevin_step": 0.1,
    },
    # ... with the four times wider energy model, the one setting that met the ranking target.
    "demo+energy-width-4+energy-langevin-5": {"energy_width": 4, "energy_langevin": 5},
    "demo+pca-path+energy-r1-0.1+energy-langevin-5+energy-width-4": {
        "pca_path": True, "loss": {"energy_r1": 0.1}, "energy_langevin": 5, "energy_width": 4,
    },
    # The PCA path's reconstruction ends above the PCA's own at 40k images, on training faces
    # too. Is it the KL's pull on the codes? The reconstruction weighted against the rest:
    "demo+pca-path+energy-r1-0.1+rec-2": {"pca_path": True, "loss": {"energy_r1": 0.1, "rec": 2.0}},
    "demo+pca-path+energy-r1-0.1+rec-4": {"pca_path": True, "loss": {"energy_r1": 0.1, "rec": 4.0}},
    # The codes of held-out faces sit off the prior's centre (mean of length 2 to 5 in every
    # run), and prior samples show blocks that the same draws shifted by that mean do not (at
    # 64 px). The marginal KL's charge on the offset, weighted up:
    "demo+pca-path+energy-r1-0.1+marginal-kl-10": {
        "pca_path": True, "loss": {"energy_r1": 0.1, "marginal_kl": 10.0},
    },
    "demo+pca-path+energy-r1-0.1+marginal-kl-100": {
        "pca_path": True, "loss": {"energy_r1": 0.1, "marginal_kl": 100.0},
    },
    # The data ranked below random-scale noise (a flat colour to independent pixels): the
    # generator's samples never show the energy such images, and the PCA path's energy rates a
    # flat grey image 2 standard deviations of the held-out energies below the faces.
    "demo+energy-outliers-1": {"loss": {"energy_outliers": 1.0}},
    "demo+pca-path+energy-r1-0.1+energy-outliers-1": {
        "pca_path": True, "loss": {"energy_r1": 0.1, "energy_outliers": 1.0}
    },
    "demo+energy-outliers-4": {"loss": {"energy_outliers": 4.0}},
    "demo+pca-path+energy-r1-0.1+energy-outliers-4": {
        "pca_path": True, "loss": {"energy_r1": 0.1, "energy_outliers": 4.0}
    },
}

# Rows measured before the energy model's average was a default: they evaluate the energy model
# itself (their training is the same either way) unless they set a half-life.
CONFIGS_BEFORE_ENERGY_AVERAGE: dict[str, dict] = {
    "demo-raw-energy": {},
    # The inference model's average at other half-lives (the default: the generator average's,
    # 2,000 images in the demo).
    "demo+inference-ema-1k": {"inference_ema_kimg": 1.0},
    "demo+inference-ema-10k": {"inference_ema_kimg": 10.0},
    # Adam momentum (beta1 0.9) for the inference model only; its learning rate 1e-3 / 4e-3.
    "demo+inference-momentum": {"betas_inference": [0.9, 0.99]},
    "demo+inference-lr-1e-3": {"lr": {"inference": 1e-3}},
    "demo+inference-lr-4e-3": {"lr": {"inference": 4e-3}},
    # The energy model's learning rate halved (2e-4, a tenth, broke the samples before).
    "demo+energy-lr-1e-3": {"lr": {"energy": 1e-3}},
    # A smaller latent (the demo's is 64): the codes of the 64-d demo use about 17 directions.
    "demo+latent-32": {"latent": 32},
    "demo+latent-16": {"latent": 16},
    "demo+latent-8": {"latent": 8},
    # An average of the energy model with the generator average's half-life, evaluated (the
    # default now: the same as `demo`).
    "demo+energy-ema-2k": {"energy_ema_kimg": 2.0},
    # The drift penalty 3e-3 on both sides (1e-2 steadied the scale but lost the ranking).
    "demo+drift-3e-3": {"loss": {"energy_drift": 3e-3, "energy_drift_fake": 3e-3}},
    # Adam momentum for the energy model alone, its raw energy evaluated.
    "demo-raw-energy+energy-momentum": {"betas_energy": [0.5, 0.99]},
    # A short average of the energy model (a tenth of the generator average's half-life).
    "demo+energy-ema-0.2k": {"energy_ema_kimg": 0.2},
}


def _raw_energy(over: dict) -> dict:
    """A row measured before the energy model's average: it evaluates the model itself."""
    return {"energy_ema_kimg": 0.0, **over}


CONFIGS.update({n: _raw_energy(o) for n, o in CONFIGS_BEFORE_ENERGY_AVERAGE.items()})

# Rows measured before the inference model's average was a default: they evaluate the
# inference model itself (their training is the same either way).
CONFIGS_BEFORE_INFERENCE_AVERAGE: dict[str, dict] = {
    "demo-no-inference-ema": {},
    # The codes' decorrelation weighted 4 instead of 1.
    "demo+decorrelation-4": {"loss": {"code_decorrelation": 4.0}},
    # The codes matched to the prior by MMD (inverse multiquadric kernels), weight 100 / 1000.
    "demo+mmd-100": {"loss": {"code_mmd": 100.0}},
    "demo+mmd-1000": {"loss": {"code_mmd": 1000.0}},
    # The sleep phase (NLL of z under q(z|g(z))) weighted 1 / 4 instead of 0.1.
    "demo+sleep-1": {"loss": {"latent_nll": 1.0}},
    "demo+sleep-4": {"loss": {"latent_nll": 4.0}},
    # An average of the energy model (half-life 10,000 images), evaluated in its place.
    "demo+energy-ema-10k": {"energy_ema_kimg": 10.0},
}


def _without_average(over: dict) -> dict:
    """A row measured before the inference and energy models' averages: it evaluates the
    models themselves (unless it sets a half-life)."""
    return {"inference_ema_kimg": 0.0, **_raw_energy(over)}


CONFIGS.update({n: _without_average(o) for n, o in CONFIGS_BEFORE_INFERENCE_AVERAGE.items()})

# Rows measured with the marginal KL, before the codes' decorrelation was a default.
CONFIGS_BEFORE_DECORRELATION: dict[str, dict] = {
    "demo-no-decorrelation": {},
    # The generator average's half-life (the demo's is 2,000 images).
    "demo+ema-0.5k": {"ema_kimg": 0.5},
    "demo+ema-5k": {"ema_kimg": 5.0},
    # Reconstruction weighted 4x against KL, energy and drift terms (a smaller pixel noise).
    "demo+rec-4": {"loss": {"rec": 4.0}},
    # ... and the sleep phase (mu(g(z)) against z) weighted 1 instead of 0.1.
    "demo+rec-4+latent-nll-1": {"loss": {"rec": 4.0, "latent_nll": 1.0}},
    # The energy model's learning rate 2e-4 (the demo's is 2e-3 for all three networks).
    "demo+energy-lr-2e-4": {"lr": {"energy": 2e-4}},
}


def _without(over: dict, *terms: str) -> dict:
    """A row measured before `terms` were defaults: it trains with their weights 0 (unless
    the row sets them itself)."""
    return {**over, "loss": {**dict.fromkeys(terms, 0.0), **over.get("loss", {})}}


CONFIGS.update(
    {
        n: _without_average(_without(o, "code_decorrelation"))
        for n, o in CONFIGS_BEFORE_DECORRELATION.items()
    }
)


# Rows measured with the defaults before the marginal KL, kept reproducible.
CONFIGS_BEFORE: dict[str, dict] = {
    "demo-no-marginal-kl": {},
    # The defaults before: the drift penalty on real energies only, and batch 32.
    "demo-drift-real": {"loss": {"energy_drift_fake": 0.0}},
    "demo-batch32-drift-real": {"batch": 32, "loss": {"energy_drift_fake": 0.0}},
    "demo-drift-real+latent-nll-1": {"loss": {"energy_drift_fake": 0.0, "latent_nll": 1.0}},
    "demo+inference-betas-0.9": {"betas_inference": [0.9, 0.99]},
    "demo+drift-1e-2": {"loss": {"energy_drift": 1e-2, "energy_drift_fake": 1e-2}},
    "demo+mbstd": {"mbstd_group": 4},
    "paper-opt": PAPER_OPT,
    "paper-opt+kl-sum": {**PAPER_OPT, "loss": {"kl_reduction": "sum"}},
    "reference@time": {
        **PAPER_OPT,
        "architecture": "reference",
        "latent": 100,
        "weight_decay_generator": 5e-4,
        "loss": {"energy_drift": 0.0},
    },
    # The cifar10 preset's networks and settings (all but its batch), at 32 px.
    "paper-preset@time": {
        **PAPER_OPT,
        **{k: v for k, v in PRESETS["cifar10"].items()
           if k.startswith(("networks.fmap_", "networks.latent", "loss.", "optim.weight_decay"))},
    },
    "demo+energy-0.1": {"loss": {"energy": 0.1}},
    "demo+kl-sum": {"loss": {"kl_reduction": "sum"}},
    "demo+latent-nll-1": {"loss": {"latent_nll": 1.0}},
    "demo+latent-nll-1+energy-0.1": {"loss": {"latent_nll": 1.0, "energy": 0.1}},
    "demo+wide@time": {"fmap_base": 1024, "fmap_max": 128},
    "paper-opt+raw-energy": {**PAPER_OPT, "loss": {"energy_drift": 0.0}},
    "paper-opt+mbstd": {**PAPER_OPT, "mbstd_group": 4},
    "demo-lr+betas-0.5": {"betas": [0.5, 0.999]},
    "paper-opt+wide@time": {**PAPER_OPT, "fmap_base": 1024, "fmap_max": 128},
}
# (The decorrelation came after the marginal KL: these rows train without either.)
CONFIGS.update(
    {
        n: _without_average(_without(o, "marginal_kl", "code_decorrelation"))
        for n, o in CONFIGS_BEFORE.items()
    }
)

# Every row above was measured before the outliers became a default: it trains without them
# unless it sets their weight itself (so `demo+energy-outliers-1` is the defaults now, and
# `demo-no-outliers` the row that was `demo` before).
CONFIGS = {n: _without(o, "energy_outliers") for n, o in CONFIGS.items()}
CONFIGS["demo-no-outliers"] = CONFIGS.pop("demo")
CONFIGS = {"demo": {}, **CONFIGS}

def _path(**over) -> dict:
    """The PCA-path recipe (`--pca-path --energy-r1 0.1`, the outliers explicit) with `over`
    on top; `over["loss"]` adds to its loss weights."""
    loss = {"energy_r1": 0.1, "energy_outliers": 1.0, **over.pop("loss", {})}
    return {"pca_path": True, **over, "loss": loss}


# Rows measured with the outliers a default.
CONFIGS.update(
    {
        # The PCA path's held-out energy shrinks from a spread of 70 to 100 at the halfway
        # snapshot to about 33 at the last, so its mean moves one to two final spreads: the
        # drift penalty ten times stronger on both sides bounds the energies from the start.
        "demo+pca-path+energy-r1-0.1+drift-1e-2": {
            "pca_path": True,
            "loss": {"energy_r1": 0.1, "energy_drift": 1e-2, "energy_drift_fake": 1e-2},
        },
        "demo+pca-path+energy-r1-0.1+drift-3e-3": {
            "pca_path": True,
            "loss": {"energy_r1": 0.1, "energy_drift": 3e-3, "energy_drift_fake": 3e-3},
        },
        # The energy model's average over a half-life of 10,000 images instead of the demo's
        # 2,000: the defaults rank CIFAR-10 at 0.87, 0.61 and 0.87 over three seeds, and the
        # raw energy's ranking swings from step to step.
        "demo+energy-ema-10k+energy-outliers-1": {
            "energy_ema_kimg": 10.0, "loss": {"energy_outliers": 1.0}
        },
        "demo+energy-ema-5k+energy-outliers-1": {
            "energy_ema_kimg": 5.0, "loss": {"energy_outliers": 1.0}
        },
        "demo+pca-path+energy-r1-0.1+energy-ema-10k+energy-outliers-1": _path(energy_ema_kimg=10.0),
        # The PCA path's reconstruction ends above the PCA's at 40,000 images, and codes fitted
        # per face (recon-fit) barely improve on the inference model's: the generator limits
        # it. More steps (batch 4) or a faster generator (its learning rate over the others'):
        "demo+pca-path+energy-r1-0.1+energy-ema-10k+batch-4": _path(energy_ema_kimg=10.0, batch=4),
        "demo+pca-path+energy-r1-0.1+energy-ema-10k+generator-lr-4e-3": _path(
            energy_ema_kimg=10.0, lr={"generator": 4e-3}
        ),
        "demo+pca-path+energy-r1-0.1+energy-ema-10k+generator-lr-8e-3": _path(
            energy_ema_kimg=10.0, lr={"generator": 8e-3}
        ),
        "demo+pca-path+energy-r1-0.1+energy-ema-10k+batch-4+generator-lr-4e-3": _path(
            energy_ema_kimg=10.0, batch=4, lr={"generator": 4e-3}
        ),
        # With the faster generator the raw energy's gap to the samples closes within 12,000
        # images, and the demo's 2,000-image average follows it better than 10,000.
        "demo+pca-path+energy-r1-0.1+generator-lr-8e-3": _path(lr={"generator": 8e-3}),
        # ... and twice as fast again.
        "demo+pca-path+energy-r1-0.1+generator-lr-16e-3": _path(lr={"generator": 16e-3}),
        # The four times wider energy model (which had ranked CIFAR-10 at 0.89 to 0.97 with
        # the demo) on the PCA path, now with the outliers.
        "demo+pca-path+energy-r1-0.1+energy-width-4+energy-outliers-1": _path(energy_width=4),
    }
)


def config_for(name: str, data: str, kimg: float, seed: int) -> dict:
    row = CONFIGS[name]  # in release 0.1.0's terms, or `section.field` values
    dotted = {k: v for k, v in row.items() if "." in k}
    run = dict(data=data, max_res=32, start_res=32, stable_kimg=kimg, snapshot_kimg=kimg / 2,
               workers=0, seed=seed)
    flat = values_0_1({**run, **{k: v for k, v in row.items() if "." not in k}})
    return make_config("demo", flat | dotted)


def images_per_second(cfg: dict, steps: int = 12, repeats: int = 3) -> float:
    """Training images per second of `cfg` at 32x32 on random uint8 images after one warm-up
    step: the best of `repeats` timings of `steps` steps (the least disturbed by other load)."""
    trainer = Trainer.create(cfg)
    phase = Schedule.from_config(cfg).at(0)
    real = torch.randint(0, 256, (phase.batch, 3, 32, 32), dtype=torch.uint8)
    trainer.step(real, phase, 0)
    best = float("inf")
    for r in range(repeats):
        start = time.perf_counter()
        for i in range(steps):
            trainer.step(real, phase, (r * steps + i + 1) * phase.batch)
        best = min(best, time.perf_counter() - start)
    return steps * phase.batch / best


def evaluate_run(run_dir: Path, heldout: str, ood: list[str], n: int, seed: int) -> dict:
    """Every figure of one run's final snapshot, via `progressive evaluate` (which also appends
    them to the run's metric JSONL files), flattened into one row."""
    run = loading.load_run(run_dir, device="cpu")
    names = ["recon", "recon-synth", "latent-recovery", "diversity", "swd"]
    if ood:
        names.append("energy-auroc")
    recs = evaluate(run, heldout, names, n, seed=seed, ood=ood, notify=print)
    row = {
        "images_shown": run.images_shown,
        "recon": recs["recon"]["value"],
        "recon_pca": recs["recon"]["pca_baseline"],
        "recon_mean_image": recs["recon"]["mean_image_baseline"],
        "recon_synth": recs["recon-synth"]["value"],
        "latent_r2": recs["latent-recovery"]["value"],
        "diversity": recs["diversity"]["value"],
        "precision": recs["diversity"]["precision"],
        "recall": recs["diversity"]["recall"],
        "swd": recs["swd"]["value"],
        "swd_init": recs["swd"]["at_init"],
    }
    if ood:
        e = recs["energy-auroc"]
        row["energy_heldout"] = e["heldout"]["energy"]
        row["energy_samples"] = e["samples"]["energy"]
        prev = e.get("previous_snapshot")
        row["energy_heldout_previous"] = prev["heldout_energy"] if prev else None
        row["energy_samples_previous"] = prev["samples_energy"] if prev else None
        row["energy_offset_shift"] = prev["offset_shift_in_std"] if prev else None
        row["sets"] = e["sets"]
    return row


def format_table(rows: list[dict], ood_names: list[str]) -> str:
    """A markdown table: one row per configuration."""
    head = [
        "config",
        "kimg",
        "train min",
        "recon (PCA)",
        "recon-synth",
        "latent R^2",
        "diversity",
        "prec/rec",
        "SWD (init/now)",
        "E held-out (prev)",
        "E samples",
    ]
    for name in ood_names:
        head += [f"E {name}", f"AUROC {name} E/KL/rec"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        prev = r.get("energy_heldout_previous")
        cells = [
            r["config"],
            f"{r['kimg']:.1f}",
            f"{r['train_s'] / 60:.1f}" if r.get("train_s") else "-",
            f"{r['recon']:.4f} ({r['recon_pca']:.4f})",
            f"{r['recon_synth']:.4f}",
            f"{r['latent_r2']:.2f}",
            f"{r['diversity']:.2f}",
            f"{r['precision']:.2f}/{r['recall']:.2f}",
            f"{r['swd_init'] / r['swd']:.1f}x ({r['swd']:.1f})",
        ]
        if "energy_heldout" in r:
            cells += [
                f"{r['energy_heldout']['mean']:.3g}" + (f" ({prev['mean']:.3g})" if prev else ""),
                f"{r['energy_samples']['mean']:.3g}",
            ]
            for name in ood_names:
                s = r["sets"][name]
                cells += [
                    f"{s['energy']['mean']:.3g}",
                    f"{s['auroc_energy']:.2f}/{s['auroc_kl']:.2f}/{s['auroc_recon']:.2f}",
                ]
        else:
            cells += ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True, help="training dataset (32 px or more)")
    ap.add_argument("--heldout", required=True, help="held-out dataset of the same kind")
    ap.add_argument("--ood", action="append", default=[], help="NAME=DATASET, repeatable")
    ap.add_argument("--kimg", type=float, default=40.0, help="thousands of images per row")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names")
    ap.add_argument("--out", default="checkpoints/quality")
    ap.add_argument("--n", type=int, default=500, help="held-out images evaluated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--eval-only", action="store_true", help="only rows already trained")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [c for c in args.configs.split(",") if c]
    for name in names:
        if name not in CONFIGS:
            sys.exit(f"--configs: unknown {name!r}; choose from {', '.join(CONFIGS)}")
    ood = dict(o.split("=", 1) for o in args.ood)

    speed_file = out / "speed.json"
    speeds = json.loads(speed_file.read_text()) if speed_file.exists() else {}
    missing = [name for name in names if name not in speeds]
    if missing:  # calibrated in this run
        for name in missing:
            cfg = config_for(name, args.train, args.kimg, args.seed)
            speeds[name] = images_per_second(cfg)
            print(f"calibration {name}: {speeds[name]:.1f} img/s", flush=True)
        speed_file.write_text(json.dumps(speeds, indent=1))
    # Equal time is relative to the median speed of the equal-images rows (the same networks
    # measured several times, which evens out other load on the machine).
    # Rows added later are calibrated then, under other load: the base stays the one computed
    # when the first @time row needed it, and is kept in speed.json.
    if "_base" not in speeds:
        speeds["_base"] = statistics.median(
            speeds[n] for n in names if not n.endswith("@time") and n in speeds
        )
        speed_file.write_text(json.dumps(speeds, indent=1))
    base_speed = speeds["_base"]

    rows = []
    for name in names:
        kimg = args.kimg
        if name.endswith("@time"):
            kimg = args.kimg * speeds[name] / base_speed
        cfg = config_for(name, args.train, kimg, args.seed)
        run_dir = out / name
        existing = list_snapshots(run_dir)
        final = round(kimg * 1000)
        done = [s for s in existing if loading.read_state(s)["images_shown"] >= final]
        start = time.perf_counter()
        if not done and args.eval_only:
            continue
        if not done:
            print(f"training {name}: {kimg:.2f} kimg", flush=True)
            train(cfg, run_dir, snapshot=existing[-1] if existing else None, progress=False)
            (run_dir / "wall_s.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
        if args.train_only:
            continue
        # A row is evaluated once per final snapshot and evaluation settings.
        key = {
            "heldout": args.heldout,
            "ood": ood,
            "n": args.n,
            "seed": args.seed,
            "snapshot": list_snapshots(run_dir)[-1].name,
            "ood_images": "spread",  # evenly over each other set (before: its first --n)
        }
        cached = run_dir / "quality-row.json"
        if cached.exists() and json.loads(cached.read_text())["key"] == key:
            row = json.loads(cached.read_text())["row"]
        else:
            print(f"evaluating {name}", flush=True)
            row = evaluate_run(run_dir, args.heldout, list(ood.values()), args.n, args.seed)
            if ood:  # the sets by the names given on the command line, in order
                row["sets"] = dict(zip(ood, row["sets"].values(), strict=True))
            cached.write_text(json.dumps({"key": key, "row": row}, indent=1))
        wall = run_dir / "wall_s.txt"
        row = {
            "config": name,
            "kimg": kimg,
            "train_s": float(wall.read_text()) if wall.exists() else None,
            "img_per_s_calibrated": speeds[name],
            **row,
        }
        rows.append(row)
        report = json.dumps({"machine": describe(), "args": vars(args), "rows": rows}, indent=1)
        (out / "quality.json").write_text(report)
        (ROOT / "bench" / "results").mkdir(exist_ok=True)
        (ROOT / "bench" / "results" / "quality.json").write_text(report)
    if rows:
        print(format_table(rows, list(ood)))


if __name__ == "__main__":
    main()
