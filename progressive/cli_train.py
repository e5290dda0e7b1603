"""The `progressive train` command."""

from __future__ import annotations

import json
from pathlib import Path

import click

from progressive.presets import PRESETS


@click.command()
# Data and run layout.
@click.option(
    "--data",
    type=str,
    default=None,
    help="Dataset directory (make_lmdb.py). Default: the built-in synthetic data.",
)
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default="demo",
    show_default=True,
    help="Experiment preset; every value can be overridden below.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="checkpoints",
    show_default=True,
    help="Folder that holds run folders.",
)
@click.option("--name", type=str, default=None, help="Run folder name. Default: preset[-dataset].")
@click.option(
    "--resume",
    type=str,
    default=None,
    help="'auto' (newest snapshot of this run, if any) or a run folder or snapshot.",
)
# Growth schedule.
@click.option("--max-res", type=int, default=None, help="Final resolution (power of two, 4..1024).")
@click.option("--start-res", type=int, default=None, help="First resolution.")
@click.option("--fade-kimg", type=float, default=None, help="Thousands of real images per fade-in.")
@click.option(
    "--stable-kimg", type=float, default=None, help="Thousands of real images per stable phase."
)
@click.option(
    "--total-kimg", type=float, default=None, help="Stop here. Default: end of the last stage."
)
# Model and optimisation.
@click.option("--batch", type=int, default=None, help="Global batch size at every resolution.")
@click.option(
    "--lr",
    type=float,
    default=None,
    help="Learning rate of all three networks at every resolution.",
)
@click.option("--latent", type=int, default=None, help="Latent dimension.")
@click.option(
    "--fmap-base",
    type=int,
    default=None,
    help="Width numerator: channels = min(fmap_base / res, fmap_max).",
)
@click.option("--fmap-max", type=int, default=None, help="Largest width.")
@click.option(
    "--rec-scaling",
    type=click.Choice(["fixed", "sum"]),
    default=None,
    help="Reconstruction weighting across resolutions.",
)
@click.option(
    "--reset-optimizers/--keep-optimizers",
    default=None,
    help="Fresh Adam state at each stage change.",
)
# Performance and bookkeeping.
@click.option("--seed", type=int, default=None, help="Random seed.")
@click.option(
    "--mixed-precision",
    type=click.Choice(["no", "bf16", "fp16"]),
    default=None,
    help="Autocast precision.",
)
@click.option(
    "--tf32/--no-tf32",
    default=None,
    help="TensorFloat-32 for fp32 matmuls and convolutions on NVIDIA GPUs. Default: off.",
)
@click.option("--workers", type=int, default=None, help="DataLoader worker processes per rank.")
@click.option(
    "--snapshot-kimg", type=float, default=None, help="Snapshot interval, thousands of images."
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the resolved configuration and stages as JSON; train nothing.",
)
def train(
    data,
    preset,
    out,
    name,
    resume,
    max_res,
    start_res,
    fade_kimg,
    stable_kimg,
    total_kimg,
    batch,
    lr,
    latent,
    fmap_base,
    fmap_max,
    rec_scaling,
    reset_optimizers,
    seed,
    mixed_precision,
    tf32,
    workers,
    snapshot_kimg,
    dry_run,
) -> None:
    """Train generator, energy and inference models, growing them from 4x4 to --max-res."""
    from progressive import training
    from progressive.presets import make_config

    overrides = dict(
        data=data,
        max_res=max_res,
        start_res=start_res,
        fade_kimg=fade_kimg,
        stable_kimg=stable_kimg,
        total_kimg=total_kimg,
        batch=batch,
        lr=lr,
        latent=latent,
        fmap_base=fmap_base,
        fmap_max=fmap_max,
        reset_optimizers=reset_optimizers,
        seed=seed,
        mixed_precision=mixed_precision,
        tf32=tf32,
        workers=workers,
        snapshot_kimg=snapshot_kimg,
        loss={"rec_scaling": rec_scaling} if rec_scaling else None,
    )
    cfg = make_config(preset, **overrides)
    if dry_run:
        click.echo(json.dumps(training.dry_run_summary(cfg), indent=2))
        return
    cfg, run_dir, snapshot = training.resolve_run(cfg, overrides, Path(out), name, resume)
    final = training.train(cfg, run_dir, snapshot)
    click.echo(f"final snapshot: {final}")


COMMANDS = [train]
