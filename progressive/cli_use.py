"""Commands that use a trained run: interpolate, sample, reconstruct, energy, evaluate."""

from __future__ import annotations

from pathlib import Path

import click

from progressive.errors import UserError


def _model_options(fn):
    """--ckpt, --res, --device, --raw-generator: shared by every command here."""
    options = [
        click.option(
            "--ckpt",
            required=True,
            type=str,
            help="Run folder (its newest snapshot) or one snapshot folder.",
        ),
        click.option(
            "--res",
            type=int,
            default=None,
            help="Work at this completed stage's resolution. Default: the snapshot's "
            "own resolution and alpha.",
        ),
        click.option(
            "--device",
            type=str,
            default=None,
            help="cpu, cuda, cuda:1, ... Default: cuda when available, else cpu.",
        ),
        click.option(
            "--raw-generator",
            is_flag=True,
            help="Use the trained generator instead of its moving average.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _load(ckpt: str, device: str | None, res: int | None, raw_generator: bool):
    from progressive.use import load_model

    return load_model(ckpt, device=device, res=res, raw_generator=raw_generator)


def _fmt(stats: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.5g}" for k, v in stats.items())


@click.command()
@_model_options
@click.option(
    "--seeds",
    type=str,
    default=None,
    help="Endpoints from seeds, e.g. 3,7,12: a walk through each consecutive pair.",
)
@click.option(
    "--from",
    "from_image",
    type=click.Path(dir_okay=False),
    default=None,
    help="Start at this image's encoding (inference model mean).",
)
@click.option(
    "--to",
    "to_image",
    type=click.Path(dir_okay=False),
    default=None,
    help="End at this image's encoding.",
)
@click.option("--steps", type=int, default=8, show_default=True, help="Images per walk.")
@click.option("--slerp", is_flag=True, help="Spherical instead of linear interpolation.")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help=".png grid (one row per walk), or .gif/.mp4 animation.",
)
@click.option("--fps", type=float, default=10.0, show_default=True, help="Animation frame rate.")
@click.option(
    "--smooth-video",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Instead: a video of this length through Gaussian-smoothed random latents.",
)
@click.option(
    "--smoothing",
    type=float,
    default=1.0,
    show_default=True,
    help="Smoothing width of --smooth-video in seconds.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --smooth-video.")
def interpolate(
    ckpt,
    res,
    device,
    raw_generator,
    seeds,
    from_image,
    to_image,
    steps,
    slerp,
    out,
    fps,
    smooth_video,
    smoothing,
    seed,
):
    """Latent walks (1 - a) z0 + a z1 between seeds or between two real images."""
    from progressive import use

    if fps <= 0:
        raise UserError("--fps must be positive")
    given = [
        seeds is not None,
        from_image is not None or to_image is not None,
        smooth_video is not None,
    ]
    if sum(given) != 1:
        raise UserError("give exactly one of --seeds, --from/--to, --smooth-video")
    model = _load(ckpt, device, res, raw_generator)
    if smooth_video is not None:
        if smooth_video <= 0:
            raise UserError("--smooth-video must be a positive number of seconds")
        frames = use.smooth_video(model, out, smooth_video, fps, smoothing, seed)
        click.echo(f"wrote {out}: {frames} frames at {model.res}px, {fps:g} fps")
        return
    if from_image is not None:
        if to_image is None or from_image is None:
            raise UserError("--from and --to go together: give both images")
        images = [
            use.read_image_file(p, model.res, model.run.config["max_res"])
            for p in (from_image, to_image)
        ]
        import torch

        use.interpolate(
            model, out, endpoints_images=torch.stack(images), steps=steps, spherical=slerp, fps=fps
        )
        walks = 1
    else:
        seed_list = use.parse_seeds(seeds)
        use.interpolate(model, out, seeds=seed_list, steps=steps, spherical=slerp, fps=fps)
        walks = len(seed_list) - 1
    click.echo(
        f"wrote {out}: {walks} walk(s) of {steps} steps at {model.res}px (alpha {model.alpha:.3g})"
    )


@click.command()
@_model_options
@click.option("--n", type=int, default=64, show_default=True, help="Number of images.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--truncation",
    type=float,
    default=1.0,
    show_default=True,
    help="Scale latents toward the mean (0): z * psi.",
)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="One grid image.")
@click.option(
    "--outdir", type=click.Path(file_okay=False), default=None, help="One PNG per image instead."
)
@click.option("--nrow", type=int, default=None, help="Images per grid row. Default: about sqrt(n).")
def sample(ckpt, res, device, raw_generator, n, seed, truncation, out, outdir, nrow):
    """Random samples from the generator."""
    from progressive import use
    from progressive.grids import save_grid

    if (out is None) == (outdir is None):
        raise UserError("give exactly one of --out (a grid) or --outdir (one PNG per image)")
    if n < 1:
        raise UserError("--n must be at least 1")
    model = _load(ckpt, device, res, raw_generator)
    images = use.sample(model.generator, n, seed, model.latent, model.res, model.alpha, truncation)
    if out is not None:
        use.check_output(out, (".png", ".jpg"), "--out")
        save_grid(images, out, nrow or max(1, round(n**0.5)))
        click.echo(f"wrote {out}: {n} samples at {model.res}px")
    else:
        folder = Path(outdir)
        for i, image in enumerate(images):
            save_grid(image[None], folder / f"seed{seed:04d}-{i:05d}.png", nrow=1)
        click.echo(f"wrote {n} images at {model.res}px to {folder}")


@click.command()
@_model_options
@click.option("--images", required=True, type=str, help="A dataset directory or image folder.")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Grid: each real image beside its reconstruction.",
)
@click.option("--n", type=int, default=32, show_default=True, help="Number of images.")
def reconstruct(ckpt, res, device, raw_generator, images, out, n):
    """Encode real images (inference mean) and decode them again."""
    from progressive import metrics, use
    from progressive.grids import pairs, save_grid

    model = _load(ckpt, device, res, raw_generator)
    _, real = use.load_images(images, model.res, model.run.config["max_res"], n)
    recon = use.reconstruct(model.generator, model.inference, real, model.res, model.alpha)
    real_in = use.prepare_real(real, model.alpha)
    use.check_output(out, (".png", ".jpg"), "--out")
    save_grid(pairs(real_in, recon), out, nrow=2 * min(4, len(real)))
    err = metrics.reconstruction_error(real_in, recon)
    click.echo(f"wrote {out}: {len(real)} images at {model.res}px")
    click.echo(f"MSE per image ([-1, 1] range): {_fmt(use.summary(err))}")


@click.command()
@_model_options
@click.option("--images", required=True, type=str, help="A dataset directory or image folder.")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="CSV of image, energy (ascending).",
)
@click.option("--n", type=int, default=None, help="Only the first N images.")
def energy(ckpt, res, device, raw_generator, images, out, n):
    """Score images by energy (low = data-like)."""
    from progressive import use

    model = _load(ckpt, device, res, raw_generator)
    names, real = use.load_images(images, model.res, model.run.config["max_res"], n)
    scores = use.energies(model.energy, real, model.alpha)
    rows = use.write_energy_csv(names, scores, out)
    click.echo(f"wrote {out}: {len(rows)} images at {model.res}px")
    click.echo(f"energy: {_fmt(use.summary(scores))}")
    click.echo(f"lowest {rows[0][0]} ({rows[0][1]:.5g}), highest {rows[-1][0]} ({rows[-1][1]:.5g})")


@click.command()
@_model_options
@click.option("--data", required=True, type=str, help="Dataset directory to compare against.")
@click.option(
    "--metrics",
    "metric_names",
    type=str,
    default="swd,recon",
    show_default=True,
    help="Comma-separated: swd, recon, fid, kid.",
)
@click.option(
    "--n", type=int, default=2000, show_default=True, help="Real and generated images per metric."
)
@click.option(
    "--inception-weights",
    type=click.Path(dir_okay=False),
    default=None,
    help="torch-fidelity's InceptionV3 weights (.pth) for fid and kid.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
def evaluate(ckpt, res, device, raw_generator, data, metric_names, n, inception_weights, seed):
    """Compute metrics and append them to metric-<name>.jsonl in the run folder."""
    from progressive import use
    from progressive.run_folder import metric_file

    names = [m.strip() for m in metric_names.split(",") if m.strip()]
    if not names:
        raise UserError("--metrics is empty; choose from swd, recon, fid, kid")
    if n < 2:
        raise UserError("--n must be at least 2")
    model = _load(ckpt, device, res, raw_generator)
    results = use.evaluate(
        model,
        data,
        names,
        n,
        inception_weights=inception_weights,
        seed=seed,
        notify=lambda msg: click.echo(msg, err=True),
    )
    for name, rec in results.items():
        extra = ""
        if name == "swd":
            extra = (
                "  ("
                + ", ".join(
                    f"{r}px {v:.4g}" for r, v in zip(rec["levels"], rec["per_level"], strict=True)
                )
                + f"; at initialization {rec['at_init']:.4g})"
            )
        if name == "recon":
            extra = f"  (mean-image baseline {rec['mean_image_baseline']:.5g})"
        click.echo(f"{name:6s} {rec['value']:.6g}{extra}")
    if results:
        click.echo(
            f"appended to {metric_file(model.run.run_dir, '<name>')} "
            f"({model.res}px, alpha {model.alpha:.3g}, {model.run.images_shown} images shown)"
        )


COMMANDS: list[click.Command] = [interpolate, sample, reconstruct, energy, evaluate]
