"""Commands that use a trained run: interpolate, sample, reconstruct, energy, evaluate."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from progressive.core.errors import UserError
from progressive.core.files import check_suffix
from progressive.core.grids import grid_capacity, pairs, save_grid
from progressive.metrics import fidelity as metrics
from progressive.model.langevin import SPACES, Langevin
from progressive.model.latents import parse_seeds
from progressive.model.sampling import energies, prepare_real, sample_batches, sample_energies
from progressive.model.sampling import reconstruct as reconstruct_images
from progressive.run.folder import metric_file
from progressive.run.loading import load_run
from progressive.use import generate as use
from progressive.use import inpaint as fill
from progressive.use.evaluate import METRICS, Options, run_metrics, summary
from progressive.use.walk_energy import energy_csv_path

# Option types shared by the commands below.
FILE = click.Path(dir_okay=False)
FOLDER = click.Path(file_okay=False)
COUNT = click.IntRange(min=1)
POSITIVE = click.FloatRange(min=0, min_open=True)
NONNEG = click.FloatRange(min=0)
COUNT0 = click.IntRange(min=0)


def _run_options(*networks: str):
    """--ckpt, --res, --device, and --raw-NET for each network in `networks` the command uses
    (generator, inference, energy): how the command loads its run."""

    def wrap(fn):
        options = [
            click.option("--ckpt", help="Run folder (its newest snapshot) or snapshot.",
                         required=True),
            click.option("--res", help="A completed stage's resolution. Default: the last.",
                         type=int),
            click.option("--device", help="cpu, cuda, cuda:1, ... Default: cuda if available."),
        ] + [
            click.option(f"--raw-{net}", help=f"The raw {net} model, not its average.",
                         is_flag=True)
            for net in networks
        ]
        for option in reversed(options):
            fn = option(fn)
        return fn

    return wrap


ALL_NETWORKS = ("generator", "inference", "energy")


def _langevin_options(fn):
    """--langevin-steps, --langevin-step-size, --langevin-noise, --langevin-space: refinement
    by Langevin on the energy."""
    d, space = Langevin(), click.Choice(SPACES)
    options = [
        click.option("--langevin-steps", help="Langevin steps on E.", type=COUNT0, default=0),
        click.option("--langevin-step-size", help="Step size s.", type=POSITIVE,
                     default=d.step_size),
        click.option("--langevin-noise", help="Temperature T.", type=NONNEG, default=d.noise),
        click.option("--langevin-space", help="image, or latent through g.", type=space,
                     default=d.space),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _chain(options: dict):
    """Take the Langevin options out of `options`: the chain they describe."""
    names = ("langevin_steps", "langevin_step_size", "langevin_noise", "langevin_space")
    return Langevin(*(options.pop(name) for name in names))


def _load(options: dict):
    """Take the run options out of `options` and load the run they name."""
    return load_run(
        options.pop("ckpt"), options.pop("device"), options.pop("res"),
        options.pop("raw_generator", False), options.pop("raw_inference", False),
        options.pop("raw_energy", False),
    )


def _metric_names() -> tuple[str, ...]:
    return METRICS


def _fmt(values) -> str:
    """Mean, median, min and max of a 1-D tensor, on one line."""
    v = values.double()
    stats = {"mean": v.mean(), "median": v.median(), "min": v.min(), "max": v.max()}
    return ", ".join(f"{k} {x.item():.5g}" for k, x in stats.items())


@click.command()
@_run_options(*ALL_NETWORKS)
# Endpoints: seeds, two images, or a smoothed random path.
@click.option("--seeds", help="Seeds, e.g. 3,7,12: a walk between each consecutive pair.")
@click.option("--from", "from_image", help="Start at this image's encoding.", type=FILE)
@click.option("--to", "to_image", help="End at this image's encoding.", type=FILE)
@click.option("--smooth-video", help="Instead: a smoothed video.", type=POSITIVE, metavar="SECONDS")
@click.option("--smoothing", help="Its smoothing width.", type=click.FloatRange(min=0), default=1.0)
@click.option("--seed", help="Seed of --smooth-video.", type=int, default=0)
# The walk and its output.
@click.option("--steps", help="Images per walk.", type=click.IntRange(min=2), default=8)
@click.option("--slerp", help="Spherical instead of linear interpolation.", is_flag=True)
@click.option("--out", help=".png grid (a row per walk), .gif or .mp4.", type=FILE, required=True)
@click.option("--fps", help="Animation frame rate.", type=POSITIVE, default=10.0)
@click.option("--energy", help="Also each frame's energy: OUT-energy.csv, curve.", is_flag=True)
def interpolate(**options):
    """Latent walks (1 - a) z0 + a z1 between seeds or between two real images."""
    seeds, from_image, to_image = options["seeds"], options["from_image"], options["to_image"]
    images_given = from_image is not None or to_image is not None
    if sum([seeds is not None, images_given, options["smooth_video"] is not None]) != 1:
        raise UserError("give exactly one of --seeds, --from/--to, --smooth-video")
    if images_given and (from_image is None or to_image is None):
        raise UserError("--from and --to go together: give both images")
    if options["energy"] and options["smooth_video"] is not None:
        raise UserError("--energy goes with --seeds or --from/--to, not --smooth-video")

    run = _load(options)
    out, steps, fps = options["out"], options["steps"], options["fps"]
    energy_csv = energy_csv_path(out) if options["energy"] else None
    walk = {"steps": steps, "spherical": options["slerp"], "fps": fps, "energy_csv": energy_csv}
    if options["smooth_video"] is not None:
        frames = use.smooth_video(
            run, out, options["smooth_video"], fps, options["smoothing"], options["seed"]
        )
        click.echo(f"wrote {out}: {frames} frames at {run.res}px, {fps:g} fps")
        return
    if images_given:
        max_res = run.config.schedule.max_res
        ends = [use.read_image_file(p, run.res, max_res) for p in (from_image, to_image)]
        names = [Path(p).name for p in (from_image, to_image)]
        values = use.interpolate(run, out, endpoints_images=torch.stack(ends), names=names, **walk)
        walks = 1
    else:
        seed_list = parse_seeds(seeds)
        values = use.interpolate(run, out, seeds=seed_list, **walk)
        walks = len(seed_list) - 1
    click.echo(
        f"wrote {out}: {walks} walk(s) of {steps} steps at {run.res}px (alpha {run.alpha:.3g})"
    )
    if values is not None:
        click.echo(f"wrote {energy_csv}: energy along the walks {_fmt(values)}")


@click.command()
@_run_options("generator", "energy")
@click.option("--n", help="Number of images.", type=COUNT, default=64)
@click.option("--seed", help="Random seed.", type=int, default=0)
@click.option("--truncation", help="Latents pulled to the mean: z * psi.", type=float, default=1.0)
@click.option("--out", help="One grid image.", type=FILE)
@click.option("--outdir", help="One PNG per image instead.", type=FOLDER)
@click.option("--nrow", help="Images per grid row. Default: about sqrt(n).", type=COUNT)
@_langevin_options
def sample(**options):
    """Random samples from the generator, optionally refined by Langevin on the energy."""
    out, outdir, n, seed = options["out"], options["outdir"], options["n"], options["seed"]
    if (out is None) == (outdir is None):
        raise UserError("give exactly one of --out (a grid) or --outdir (one PNG per image)")
    chain = _chain(options)
    run = _load(options)
    if out is not None:
        check_suffix(out, (".png", ".jpg"), "--out")
        if n > grid_capacity(run.res):
            raise UserError(f"--n {n}: a grid at {run.res}px holds at most "
                            f"{grid_capacity(run.res)} images; use --outdir DIR for one PNG each")
    args = (run.generator, n, seed, run.latent, run.res, run.alpha, options["truncation"])
    kept, after, i = [], [], 0
    for x in sample_batches(*args, energy=run.energy, chain=chain):
        if chain.steps:
            after.append(sample_energies(run.energy, x, run.alpha))
        if out is not None:
            kept.append(x)
            continue
        for image in x:  # streamed: one batch in memory at a time
            save_grid(image[None], Path(outdir) / f"seed{seed:04d}-{i:05d}.png", nrow=1)
            i += 1
    if chain.steps:
        before = torch.cat([sample_energies(run.energy, x, run.alpha)
                            for x in sample_batches(*args)]).mean()
        click.echo(
            f"{chain.steps} Langevin steps in {chain.space} space (step size {chain.step_size:g},"
            f" noise {chain.noise:g}): mean energy {before:.5g} -> {torch.cat(after).mean():.5g}"
        )
    if out is not None:
        save_grid(torch.cat(kept), out, options["nrow"] or max(1, round(n**0.5)))
        click.echo(f"wrote {out}: {n} samples at {run.res}px")
    else:
        click.echo(f"wrote {n} images at {run.res}px to {outdir}")


@click.command()
@_run_options("generator", "inference")
@click.option("--data", help="A dataset directory or image folder.", required=True)
@click.option("--out", help="Grid: real images beside reconstructions.", type=FILE, required=True)
@click.option("--n", help="Number of images.", type=COUNT, default=32)
def reconstruct(**options):
    """Encode real images (inference mean) and decode them again."""
    run, out = _load(options), options["out"]
    _, real = use.load_images(options["data"], run.res, run.config.schedule.max_res, options["n"])
    recon = reconstruct_images(run.generator, run.inference, real, run.res, run.alpha)
    real_in = prepare_real(real, run.alpha)
    check_suffix(out, (".png", ".jpg"), "--out")
    save_grid(pairs(real_in, recon), out, nrow=2 * min(4, len(real)))
    err = metrics.reconstruction_error(real_in, recon)
    click.echo(f"wrote {out}: {len(real)} images at {run.res}px")
    click.echo(f"MSE per image ([-1, 1] range): {_fmt(err)}")


@click.command()
@_run_options("energy")
@click.option("--data", help="A dataset directory or image folder.", required=True)
@click.option("--out", help="CSV of image, energy (ascending).", type=FILE, required=True)
@click.option("--n", help="Only the first N images.", type=COUNT)
def energy(**options):
    """Score images by energy (low = data-like)."""
    run, out = _load(options), options["out"]
    skipped: list[tuple[str, str]] = []
    max_res = run.config.schedule.max_res
    names, real = use.load_images(options["data"], run.res, max_res, options["n"], skipped=skipped)
    for path, reason in skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    scores = energies(run.energy, real, run.alpha)
    rows = use.write_energy_csv(names, scores, out)
    left = f", {len(skipped)} skipped (listed above)" if skipped else ""
    click.echo(f"wrote {out}: {len(rows)} images at {run.res}px{left}")
    click.echo(f"energy: {_fmt(scores)}")
    click.echo(f"lowest {rows[0][0]} ({rows[0][1]:.5g}), highest {rows[-1][0]} ({rows[-1][1]:.5g})")


@click.command()
@_run_options(*ALL_NETWORKS)
@click.option("--data", help="Dataset directory to compare against.", required=True)
@click.option("--metrics", "metric_names", help=f"Of {', '.join(_metric_names())}.",
              default="swd,recon")
@click.option("--ood", help="Dataset, image folder or noise:flat/smooth/pixel for energy-auroc; "
              "repeatable.", multiple=True)
@click.option("--n", help="Real and generated images.", type=click.IntRange(min=2), default=2000)
@click.option("--inception-weights", help="torch-fidelity's InceptionV3 .pth file.", type=FILE)
@click.option("--seed", help="Random seed (and of --occlude's masks).", type=int, default=0)
@_langevin_options
@click.option("--occlude", help="recovery: the masks to recover from.",
              type=click.Choice(["pepper50", "pepper70", "block20", "block30", "blocks10"]))
def evaluate(**options):
    """Compute metrics and append them to metric-<name>.jsonl in the run folder."""
    names = [m.strip() for m in options.pop("metric_names").split(",") if m.strip()]
    if not names:
        raise UserError(f"--metrics is empty; choose from {', '.join(METRICS)}")
    chain = _chain(options)
    run = _load(options)
    notify = lambda msg: click.echo(msg, err=True)  # noqa: E731
    settings = Options(options["data"], options["n"], options["seed"], chain, options["occlude"],
                       tuple(options["ood"]), options["inception_weights"], notify)
    results = run_metrics(run, names, settings)
    for name, rec in results.items():
        click.echo(f"{name:15s} {rec['value']:.6g}{summary(rec)}")
    if results:
        files = ", ".join(metric_file(run.run_dir, name).name for name in results)
        click.echo(
            f"appended to {files} in {run.run_dir} "
            f"({run.res}px, alpha {run.alpha:.3g}, {run.images_shown} images shown)"
        )


@click.command()
@_run_options(*ALL_NETWORKS)
@click.option("--data", help="A folder of images (or a dataset).", required=True)
@click.option("--masks", "masks_dir", help="Mask PNGs named as the images (white = visible).",
              type=FOLDER)
@click.option("--occlude", help="Or generated masks of this kind.",
              type=click.Choice(["pepper50", "pepper70", "block20", "block30", "blocks10"]))
@click.option("--seed", help="Seed of --occlude: mask i is a function of (seed, i).", type=int,
              default=0)
@click.option("--outdir", help="Folder for the completed images and grid.png.", type=FOLDER,
              required=True)
@click.option("--n", help="Only the first N images.", type=COUNT)
@click.option("--em-rounds", help="Encode-fill rounds before decoding.", type=COUNT, default=2)
@click.option("--z-steps", help="Adam steps on z fitting the visible pixels.",
              type=click.IntRange(min=0), default=20)
@click.option("--z-lr", help="Their learning rate.", type=POSITIVE, default=0.05)
@click.option("--blend/--no-blend", help="Add the fill's error on the visible pixels, "
              "interpolated into the holes (Poisson blending).", default=True, show_default=True)
@click.option("--energy-steps", help="Gradient steps lowering the energy of the missing pixels.",
              type=click.IntRange(min=0), default=0)
@click.option("--energy-lr", help="Their step size.", type=POSITIVE, default=0.01)
def inpaint(**options):
    """Fill the missing pixels of images with the model; visible pixels are kept exactly."""
    masks_dir, occlude = options["masks_dir"], options["occlude"]
    if (masks_dir is None) == (occlude is None):
        raise UserError("give exactly one of --masks DIR or --occlude KIND")
    run = _load(options)
    max_res = run.config.schedule.max_res
    how = fill.Completion(options["em_rounds"], options["z_steps"], options["z_lr"],
                          options["energy_steps"], options["energy_lr"], options["blend"])
    written = use.inpaint(run, options["data"], options["outdir"], how, masks_dir=masks_dir,
                          occlude=occlude, seed=options["seed"], n=options["n"],
                          max_res=max_res)
    click.echo(f"wrote {written} completed images at {run.res}px and grid.png to "
               f"{options['outdir']}")


COMMANDS: list[click.Command] = [interpolate, sample, reconstruct, energy, evaluate, inpaint]
