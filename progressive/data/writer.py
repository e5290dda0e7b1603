"""Write a source into a progressive-lmdb dataset: workers decode, crop, resize, build the
pyramid, encode and write the shards; the parent numbers the images in source order, lists
the rejected ones and writes meta.json last."""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

from progressive import __version__
from progressive.core import images as im
from progressive.core.errors import UserError
from progressive.core.files import fsync_path, tree_size, write_json_atomic
from progressive.core.resolutions import resolutions
from progressive.data import masks as mk
from progressive.data import pool
from progressive.data.format import (
    FORMAT,
    META_NAME,
    REJECTED_NAME,
    VERSION,
)
from progressive.data.shards import shard_table, sync_shards
from progressive.data.sources import Source

LABELS_NAME = "labels.json"
_OURS = re.compile(
    r"(shard-\d{5}\.lmdb|masks\.lmdb|rejected\.jsonl|labels\.json|meta\.json|\..*\.tmp-\d+.*)"
)


def encodings_for(max_res: int, encoding: str) -> dict[int, str]:
    """Encoding per resolution; "auto" is raw up to 256 (PNG decoding would dominate reading
    there) and PNG above; "compact" is raw up to 256 and JPEG above (about a fifth of PNG's
    size and twice as fast to write at 1024)."""
    if encoding not in ("auto", "compact", "raw", "png", "jpeg"):
        raise UserError(f"--encoding {encoding!r} must be auto, compact, png, jpeg or raw")
    res = resolutions(max_res)
    if encoding in ("auto", "compact"):
        high = "png" if encoding == "auto" else "jpeg"
        return {r: "raw" if r <= 256 else high for r in res}
    return dict.fromkeys(res, encoding)


def prepare_output(output: Path, overwrite: bool) -> None:
    """Make `output` ready: create it, clean leftovers of a killed run, replace a finished
    dataset only with `overwrite`, and never touch a directory holding anything else."""
    if output.exists() and not output.is_dir():
        raise UserError(f"OUTPUT {output} is a file; pass a new or empty directory")
    if not output.exists():
        output.mkdir(parents=True)
        return
    entries = list(output.iterdir())
    foreign = [e.name for e in entries if not _OURS.fullmatch(e.name)]
    if foreign:
        raise UserError(
            f"OUTPUT {output} is not empty and holds files this tool did not write "
            f"({', '.join(sorted(foreign)[:3])}); pass a new or empty directory"
        )
    meta = output / META_NAME
    if meta.exists():
        if not overwrite:
            raise UserError(
                f"OUTPUT {output} already holds a dataset; pass --overwrite to replace it"
            )
        # First the marker, so an interrupted rewrite is never taken for a finished dataset.
        meta.unlink()
        fsync_path(output)
    for e in entries:
        if e.exists():
            shutil.rmtree(e) if e.is_dir() else e.unlink()


def initial_map_size(max_res: int, shard_size: int) -> int:
    """A shard's first LMDB map: room for its images stored raw. The map is address space,
    not disk (the file grows with the data), and it doubles if an encoding needs more."""
    per_image = pool.raw_pyramid_bytes(max_res) + 16 * len(resolutions(max_res))  # + keys
    return int(min(shard_size * per_image * 1.1 + (16 << 20), 1 << 40))


def write_dataset(
    source: Source,
    output: str | os.PathLike,
    max_res: int,
    *,
    encoding: str = "auto",
    jpeg_quality: int = 95,
    shard_size: int = 10000,
    shards: int | None = None,
    workers: int | None = None,
    max_images: int | None = None,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    occlude: str | None = None,
    masks_dir: str | os.PathLike | None = None,
    mask_seed: int = 0,
) -> dict:
    """Convert `source` into a dataset at `output`; returns the meta dict written to meta.json.

    Bad inputs are listed in rejected.jsonl and skipped (with `strict`, the first one is a
    `UserError`). meta.json is written last: an interrupted run leaves none.

    `occlude` (a kind of `progressive.data.masks`) or `masks_dir` (mask PNGs named as the images)
    adds an observation mask per image at every resolution; bad masks are reported before
    anything is written."""
    output = Path(output)
    res_list = resolutions(max_res)
    enc = encodings_for(max_res, encoding)
    if not 1 <= jpeg_quality <= 100:
        raise UserError(f"--jpeg-quality {jpeg_quality} must be from 1 to 100")
    if source.native_res is not None and max_res > source.native_res:
        raise UserError(
            f"{source.kind} images are {source.native_res}x{source.native_res}; "
            f"use --max-res {source.native_res} or less"
        )
    if max_images is not None and max_images < 1:
        raise UserError(f"--max-images {max_images} must be at least 1")
    try:
        total_hint = len(source)
    except (NotImplementedError, TypeError):
        total_hint = None
    if max_images is not None and total_hint is not None:
        total_hint = min(total_hint, max_images)
    if shards is not None:
        if shards < 1:
            raise UserError(f"--shards {shards} must be at least 1")
        if total_hint is None:
            raise UserError(f"--shards needs a source of known size; use --shard-size for "
                            f"{source.kind}")
        shard_size = max(1, math.ceil(total_hint / shards))
    if shard_size < 1:
        raise UserError(f"--shard-size {shard_size} must be at least 1")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 0:
        raise UserError(f"--workers {workers} must be 0 or more")

    if occlude is not None and masks_dir is not None:
        raise UserError("give --occlude or --masks, not both")
    if occlude is not None:
        mk.check_kind(occlude)
    file_masks = _read_mask_dir(source, Path(masks_dir), max_res) if masks_dir else None
    source.prepare(max_res)
    lock = lock_output(output)
    try:
        prepare_output(output, overwrite)
        return _write(source, output, max_res, res_list, enc, jpeg_quality, shard_size, workers,
                      max_images, strict, progress, occlude, masks_dir, file_masks, mask_seed,
                      total_hint)
    finally:
        os.close(lock)


def lock_output(output: Path) -> int:
    """An exclusive lock (flock) on the directory `output`, created if new, held until its
    descriptor is closed: a second run writing the same output is refused in one line."""
    if output.exists() and not output.is_dir():
        raise UserError(f"OUTPUT {output} is a file; pass a new or empty directory")
    output.mkdir(parents=True, exist_ok=True)
    fd = os.open(output, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"OUTPUT {output} is being written by another run of this tool; wait for "
                        "it to finish or choose another OUTPUT") from None
    return fd


def _write(source, output, max_res, res_list, enc, jpeg_quality, shard_size, workers,
           max_images, strict, progress, occlude, masks_dir, file_masks, mask_seed,
           total_hint) -> dict:
    """`write_dataset` once the output is locked and ready."""
    pool.JOB.clear()
    pool.JOB.update(source=source, max_res=max_res, enc=enc, quality=jpeg_quality, output=output,
                shard_size=shard_size, map_size=initial_map_size(max_res, shard_size))
    labelled = type(source).label is not Source.label
    kept_labels: list = []
    kept_names: list[str] = []
    count = rejected = 0
    start = time.perf_counter()
    bar = tqdm(total=total_hint, unit="img", disable=not progress, file=sys.stderr)

    def on_batch(items: list, outcomes: list) -> tuple[int, int, bool]:
        nonlocal count, rejected
        first, last, seen = count, False, 0
        for it, out in zip(items, outcomes, strict=True):
            seen += 1
            if out is not None:
                if strict:
                    raise UserError(f"{out[0]}: {out[1]} (stopped by --strict)")
                rejected += 1
                rej.write(json.dumps({"path": out[0], "reason": out[1]}) + "\n")
                continue
            if labelled:
                kept_labels.append(source.label(it))
            if file_masks is not None:
                kept_names.append(source.name(it))
            count += 1
            if max_images is not None and count >= max_images:
                last = True
                break
        if rejected:
            bar.set_postfix(rejected=rejected, refresh=False)
        bar.update(seen)
        return first, count - first, last

    with open(output / REJECTED_NAME, "w") as rej:
        try:
            pool.convert_all(source, workers, total_hint, on_batch)
        finally:
            bar.close()
        rej.flush()
        os.fsync(rej.fileno())
    shard_list = shard_table(count, shard_size)
    for shard, size in zip(shard_list, sync_shards(output, len(shard_list)), strict=True):
        shard["bytes"] = size
    if count == 0:
        raise UserError(
            f"no usable images in {source.input} ({rejected} rejected; see "
            f"{output / REJECTED_NAME})"
        )
    elapsed = time.perf_counter() - start
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "count": count,
        "max_res": max_res,
        "resolutions": res_list,
        "encoding": {str(r): e for r, e in enc.items()},
        "channels": 3,
        "preprocess": {
            "crop": source.crop,
            "center_crop": "square of the shorter side, centred",
            "resize": f"{im.RESIZE_FILTER} to max_res (never upsampled)",
            "png_compress_level": im.PNG_LEVEL,
            "pyramid": im.PYRAMID,
            "color": f"8-bit RGB; 16-bit scaled; transparency {im.ALPHA_POLICY}",
            "exif_orientation": "applied",
        },
        "source": source.describe(),
        "split": source.split_info(),
        "shards": shard_list,
        "rejected": rejected,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tool": {"name": "tools/make_lmdb.py", "version": __version__},
        "elapsed_s": round(elapsed, 3),
    }
    if "jpeg" in enc.values():
        meta["jpeg_quality"] = jpeg_quality
        meta["jpeg_subsampling"] = im.JPEG_SUBSAMPLING
    if occlude is not None:
        def mask_of(i: int) -> np.ndarray:
            return mk.make_mask(occlude, mask_seed, i, max_res)

        how = {"kind": occlude, "seed": mask_seed, "sized_at": mk.REFERENCE_RES}
    elif file_masks is not None:
        full = mk.pack(np.ones((max_res, max_res), dtype=bool))

        def mask_of(i: int) -> np.ndarray:
            return mk.unpack(file_masks.get(_stem(kept_names[i]), full), max_res)

        how = {"kind": "files", "dir": str(Path(masks_dir).resolve()),
               "files": len(file_masks), "images_without_mask": "fully observed",
               "resize": "observed when no missing source pixel is within the Lanczos-3 reach"}
    if occlude is not None or file_masks is not None:
        observed = mk.write_masks(output, count, mask_of, res_list)
        meta["masks"] = {**how, "path": mk.MASKS_NAME, "value": "1 observed, 0 missing",
                         "pyramid": mk.RULE, "observed_share": observed,
                         "images": "complete pixels stored; the mask says which are observed"}
    if labelled:
        write_json_atomic(output / LABELS_NAME, kept_labels)
        meta["labels"] = LABELS_NAME
    write_json_atomic(output / META_NAME, meta)
    meta["size_bytes"] = tree_size(output)
    return meta


def _stem(name: str) -> str:
    """An image's or mask's name without extension: how masks are matched to images."""
    return str(Path(name).with_suffix(""))


def _read_mask_dir(source: Source, masks_dir: Path, max_res: int) -> dict[str, bytes]:
    """Every mask PNG under `masks_dir`, checked, taken to max_res and packed, keyed by its
    name without extension; any bad mask is a UserError before anything is written."""
    if not masks_dir.is_dir():
        raise UserError(f"--masks {masks_dir} is not a folder of mask PNGs")
    if not hasattr(source, "names"):
        raise UserError(f"--masks needs a folder or zip source, not {source.kind}; "
                        "use --occlude for generated masks")
    items = {_stem(n): n for n in source.names}
    files = sorted(p for p in masks_dir.rglob("*") if p.is_file())
    if not files:
        raise UserError(f"--masks {masks_dir} holds no mask files")
    out = {}
    for path in files:
        key = _stem(str(path.relative_to(masks_dir)))
        if key not in items:
            raise UserError(f"mask {path} has no image named {key}.* in {source.input}; "
                            "name each mask after its image")
        try:
            _, img = source.load(items[key])
        except im.Reject as e:
            raise UserError(f"mask {path}: its image {items[key]} is unusable ({e})") from None
        size = img.size if hasattr(img, "size") and not isinstance(img, np.ndarray) else (
            img.shape[1], img.shape[0])
        out[key] = mk.pack(mk.load_mask_file(path, size, max_res))
    return out
