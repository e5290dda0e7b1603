"""The `progressive train` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from progressive.config.presets import PRESETS
from progressive.core.resolutions import ALL_RES

# Option types shared by several options.
KIMG = click.FloatRange(min=0)
NONNEG = click.FloatRange(min=0)  # loss weights, half-lives, temperatures
COUNT = click.IntRange(min=1)
RES = click.IntRange(4, 1024)
FOLDER = click.Path(file_okay=False)
SCALINGS = click.Choice(["fixed", "sum"])
PRECISIONS = click.Choice(["auto", "no", "bf16", "fp16"])


class Rates(click.ParamType):
    """A learning rate, with other rates at some resolutions: `2e-3` or `16e-3,64:2e-3`."""

    name = "RATE[,RES:RATE...]"

    def convert(self, value, param, ctx):
        if isinstance(value, (float, dict)):
            return value
        base, *pairs = str(value).split(",")
        try:
            rate = float(base)
            table = {int(r): float(v) for r, v in (pair.split(":") for pair in pairs)}
        except ValueError:
            self.fail(f"{value!r} is not a rate (2e-3) or a rate with others at some "
                      "resolutions (16e-3,64:2e-3)", param, ctx)
        if not all(math.isfinite(v) and v >= 0 for v in (rate, *table.values())):
            self.fail(f"{value!r}: a learning rate is a finite number, 0 or more", param, ctx)
        if unknown := sorted(set(table) - set(ALL_RES)):
            self.fail(f"{value!r}: no resolution {unknown[0]}; use one of "
                      f"{', '.join(map(str, ALL_RES))}", param, ctx)
        return {r: table.get(r, rate) for r in ALL_RES} if table else rate


RATES = Rates()


@click.command()
# Data and run layout.
@click.option("--data", help="Dataset directory (make_lmdb.py). Default: built-in synthetic data.")
@click.option("--preset", help="Experiment preset. Default: sizes from --max-res and the device.",
              type=click.Choice([*PRESETS, "auto"]))
@click.option("--out", help="Folder of run folders.", type=FOLDER, default="checkpoints")
@click.option("--name", help="Run folder name. Default: preset[-dataset].")
@click.option("--resume", help="'auto' (this run's newest snapshot) or a run folder or snapshot.")
# Growth schedule; every option from here on overrides the preset.
@click.option("--max-res", help="Final resolution (power of two).", type=RES)
@click.option("--start-res", help="First resolution.", type=RES)
@click.option("--fade-kimg", help="Thousands of real images per fade-in.", type=KIMG)
@click.option("--stable-kimg", help="Thousands of real images per stable phase.", type=KIMG)
@click.option("--total-kimg", help="Stop here. Default: the end of the last stage.", type=KIMG)
# Networks.
@click.option("--latent", help="Latent dimension.", type=COUNT)
@click.option("--fmap-base", help="Channels at res: min(fmap_base / res, fmap_max).", type=COUNT)
@click.option("--fmap-max", help="Largest width.", type=COUNT)
@click.option("--energy-width", help="The energy model's widths over the generator's.",
              type=COUNT)
@click.option("--inference-width", help="The inference model's widths over the others'.",
              type=COUNT)
@click.option("--inference-hidden", help="Width of the inference model's dense layer.",
              type=COUNT)
@click.option("--pca-path/--no-pca-path", help="Start G and I from the images' fixed PCA.",
              default=None)
# Optimisation.
@click.option("--batch", help="Global batch size at every resolution.", type=COUNT)
@click.option("--lr", help="Learning rate of all three networks (16e-3,64:2e-3: 2e-3 at 64 px).",
              type=RATES)
@click.option("--generator-lr", help="The generator's learning rate (over --lr).", type=RATES)
@click.option("--energy-lr", help="The energy model's learning rate (over --lr).", type=RATES)
@click.option("--inference-lr", help="The inference model's learning rate (over --lr).",
              type=RATES)
@click.option("--rec-scaling", help="Reconstruction weight across resolutions.", type=SCALINGS)
@click.option("--marginal-kl", help="Weight of the batch codes' KL to the prior (0: off).",
              type=NONNEG)
@click.option("--code-decorrelation", help="Weight of the codes' squared covariances (0: off).",
              type=NONNEG)
@click.option("--code-center", help="Weight of the codes' mean's squared length (0: off).",
              type=NONNEG)
@click.option("--latent-nll", help="Weight of the sleep phase, -log q(z|g(z)) (0: off).",
              type=NONNEG)
@click.option("--energy-center", help="Weight pinning E's midpoint (data/samples) at 0 (0: off).",
              type=NONNEG)
@click.option("--energy-recenter", help="Share of E's midpoint off its bias per step (0: off).",
              type=click.FloatRange(0, 1))
@click.option("--energy-r1", help="Gradient penalty on E at the data, gamma (0: off).",
              type=NONNEG)
@click.option("--energy-outliers", help="Weight ranking data below random-scale noise (0: off; "
              "default 1, paper presets 0).",
              type=NONNEG)
@click.option("--energy-every", help="Step the energy model on every k-th batch only.", type=COUNT)
@click.option("--energy-langevin", help="Langevin steps on E refining its negatives (0: off).",
              type=click.IntRange(min=0))
@click.option("--energy-langevin-step", help="Step size of those Langevin steps.",
              type=click.FloatRange(min=0, min_open=True))
@click.option("--energy-langevin-noise", help="Temperature of those steps (0: descent).",
              type=NONNEG)
@click.option("--energy-ema-kimg", help="Half-life of the energy average, used (0: none).",
              type=NONNEG)
@click.option("--inference-ema-kimg", help="Half-life of the inference average (0: none).",
              type=NONNEG)
@click.option("--reset-optimizers/--keep-optimizers", help="Reset Adam per stage.", default=None)
@click.option("--seed", help="Random seed.", type=click.IntRange(min=0))
# Speed.
@click.option("--mixed-precision", help="Default auto: bf16 where native, else fp32.",
              type=PRECISIONS)
@click.option("--tf32/--no-tf32", help="TensorFloat-32 on NVIDIA GPUs. Default: off.", default=None)
@click.option("--workers", help="DataLoader worker processes per rank.", type=click.IntRange(min=0))
# Bookkeeping.
@click.option("--snapshot-kimg", help="Snapshot interval, thousands of images.", type=KIMG)
@click.option("--keep-snapshots", help="Newest snapshots kept besides the start and each stage "
              "end (0: all). Default 4.", type=click.IntRange(min=0))
# Evaluation at every stage end, on the held-out end of the dataset.
@click.option("--holdout", help="Share held out (the last images). Default 0.1.",
              type=click.FloatRange(0, 0.5))
@click.option("--eval-images", help="Held-out images per evaluation (0: none). Default 500.",
              type=click.IntRange(min=0))
@click.option("--dry-run", help="Print the plan (JSON: stages, time, memory, data) and stop.",
              is_flag=True)
@click.option("--calibration-seconds", help="With --dry-run: time spent measuring steps.",
              type=click.FloatRange(min=0), default=20.0, show_default=True)
def train(preset, out, name, resume, rec_scaling, marginal_kl, code_decorrelation, code_center,
          latent_nll, energy_center, energy_recenter, energy_r1, energy_outliers, generator_lr,
          energy_lr, inference_lr, dry_run, calibration_seconds, **overrides) -> None:
    """Train generator, energy and inference models, growing them from 4x4 to --max-res."""
    from progressive.config.presets import make_config
    from progressive.train import trainer as training

    loss = {"rec_scaling": rec_scaling, "marginal_kl": marginal_kl,
            "code_decorrelation": code_decorrelation, "code_center": code_center,
            "latent_nll": latent_nll, "energy_center": energy_center,
            "energy_recenter": energy_recenter, "energy_r1": energy_r1,
            "energy_outliers": energy_outliers}
    overrides["loss"] = {k: v for k, v in loss.items() if v is not None} or None
    rates = {"generator": generator_lr, "energy": energy_lr, "inference": inference_lr}
    every = overrides["lr"]
    if isinstance(every, dict) or any(v is not None for v in rates.values()):
        # one network's rate over --lr or the preset's; a per-resolution --lr is every network's
        overrides["lr"] = {n: every if v is None else v for n, v in rates.items()
                           if v is not None or every is not None}
    if (preset is None and overrides["max_res"] is None and overrides["data"] is not None
            and resume is None):  # a resumed run keeps its own max_res
        overrides["max_res"] = training.dataset_max_res(overrides["data"])  # grow to the data's
    cfg = make_config(preset, **overrides)
    if dry_run:
        from progressive.train.plan import dry_run_summary

        click.echo(json.dumps(dry_run_summary(cfg, Path(out), calibration_seconds), indent=2))
        return
    cfg, run_dir, snapshot = training.resolve_run(
        cfg, overrides, Path(out), name, resume, notify=lambda m: click.echo(m, err=True)
    )
    final = training.train(cfg, run_dir, snapshot)
    click.echo(f"final snapshot: {final}")


COMMANDS = [train]
