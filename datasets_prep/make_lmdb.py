"""Convert an image collection into a progressive-lmdb dataset (LMDB shards + meta.json).

    python tools/make_lmdb.py folder ~/photos data/photos128 --max-res 128
    python tools/make_lmdb.py celeba img_align_celeba data/celeba64 --max-res 64 --split train
    python tools/make_lmdb.py synthetic 30000 data/synth256 --max-res 256
    python tools/make_lmdb.py folder faces data/faces32-block20 --max-res 32 --occlude block20
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from datasets_prep import SOURCES, make_source, write_dataset
from progressive.core.errors import UserError
from progressive.core.resolutions import MAX_RES, MIN_RES


def _check_max_res(ctx: click.Context, param: click.Parameter, value: int) -> int:
    """--max-res as every command checks it: a usage error (exit 2) unless a power of two from
    4 to 1024."""
    if value < MIN_RES or value > MAX_RES or value & (value - 1):
        raise click.UsageError(f"--max-res {value}: a power of two from {MIN_RES} to {MAX_RES}",
                               ctx)
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("source", type=click.Choice(SOURCES))
@click.argument("input", type=str)
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
# What to write
@click.option("--max-res", type=int, required=True, callback=_check_max_res,
              help="Largest resolution (power of two, 4-1024).")
@click.option("--encoding", type=click.Choice(["auto", "compact", "png", "jpeg", "raw"]),
              default="auto", show_default=True,
              help="Image encoding; auto is raw up to 256, PNG above; compact: JPEG above.")
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=95, show_default=True,
              help="JPEG quality of JPEG-encoded levels.")
# How to shard
@click.option("--shard-size", type=click.IntRange(min=1), default=10000, show_default=True,
              help="Images per shard.")
@click.option("--shards", type=click.IntRange(min=1), default=None,
              help="Split into this many shards instead (overrides --shard-size).")
# Which images
@click.option("--split", type=click.Choice(["train", "test"]), default=None,
              help="celeba: the 9,000/1,000 split; cifar10, imagenet32: default train; "
              "synthetic: test renders a disjoint held-out set.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the celeba split.")
@click.option("--max-images", type=click.IntRange(min=1), default=None,
              help="Stop after this many images written.")
# Incomplete data
@click.option("--occlude", type=click.Choice(["pepper50", "pepper70", "block20", "block30",
              "blocks10"]), default=None,
              help="Store a generated observation mask per image (sized at 64 px, scaled).")
@click.option("--masks", "masks_dir", type=click.Path(path_type=Path), default=None,
              help="Folder of mask PNGs named as the images (white observed, black missing).")
@click.option("--mask-seed", type=int, default=0, show_default=True,
              help="Seed of --occlude: mask i is a function of (seed, i).")
# How to run
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Worker processes (default: all cores; 0 or 1: in this process).")
@click.option("--strict", is_flag=True, help="Stop at the first unusable input.")
@click.option("--overwrite", is_flag=True, help="Replace a dataset already in OUTPUT.")
def main(source, input, output, max_res, encoding, jpeg_quality, shard_size, shards, split,
         seed, occlude, masks_dir, mask_seed, max_images, workers, strict, overwrite) -> None:
    """Convert INPUT of kind SOURCE into a dataset at OUTPUT (for synthetic, INPUT is a count)."""
    try:
        options = {"split": split}
        if source == "celeba":
            options["seed"] = seed
        src = make_source(source, input, **options)
        meta = write_dataset(
            src, output, max_res, encoding=encoding, jpeg_quality=jpeg_quality,
            shard_size=shard_size, shards=shards, workers=workers, max_images=max_images,
            strict=strict, overwrite=overwrite, progress=True, occlude=occlude,
            masks_dir=masks_dir, mask_seed=mask_seed,
        )
    except UserError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)
    rate = meta["count"] / max(meta["elapsed_s"], 1e-9)
    click.echo(
        f"wrote {meta['count']} images, rejected {meta['rejected']}, {rate:.1f} images/s, "
        f"{meta['size_bytes'] / 2**20:.1f} MiB in {output}"
    )


if __name__ == "__main__":
    main()
