"""Write a source into a progressive-lmdb dataset: workers decode, crop, resize, build the
pyramid, encode and write the shards; the parent numbers the images in source order, lists
the rejected ones and writes meta.json last."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import queue
import re
import shutil
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
from tqdm import tqdm

from progressive import __version__
from progressive.core import images as im
from progressive.data import masks as mk
from progressive.data.format import (
    FORMAT,
    META_NAME,
    REJECTED_NAME,
    VERSION,
)
from progressive.core.errors import UserError
from progressive.core.files import fsync_path, tree_size, write_json_atomic
from progressive.core.resolutions import resolutions
from progressive.data.shards import ShardStore, flush_in_background, shard_table, sync_shards
from progressive.data.sources import Source

LABELS_NAME = "labels.json"
MAX_BATCH = 128  # images converted and written as one unit, at most
BATCH_BYTES = 16 << 20  # and at most about this many raw pixel bytes
MAX_HELD = 3  # batches a worker may have been given and not yet written
TASK_TIMEOUT = 600  # seconds without any answer from the workers: one is stuck on a file
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


# ---- converting batches -------------------------------------------------------------------
#
# The source is cut into small batches of consecutive items. A worker converts a batch, keeps
# the encoded images and tells the parent which items it rejected; the parent, taking batches
# in source order, gives each its first global index and the number of images to keep, and
# the worker writes them into the shards itself. Only item lists and short outcome lists
# cross process boundaries, never pixels.

_job: dict[str, Any] = {}


def _convert(item: Any) -> tuple[str, dict[int, bytes] | str]:
    """(name, {res: bytes}) or (name, reason) for one item; never raises for bad input."""
    source: Source = _job["source"]
    try:
        name = source.name(item)
    except Exception:
        name = repr(item)[:200]
    try:
        name, img = source.load(item)
        x = im.crop_resize(img, _job["max_res"])
        levels = im.pyramid(x)
        return name, {r: im.encode(levels[r], e, _job["quality"]) for r, e in _job["enc"].items()}
    except im.Reject as e:
        return name, str(e)
    except MemoryError:
        return name, "out of memory while decoding"
    except Exception as e:  # any other failure of a library on a bad file is that file's fault
        return name, f"{type(e).__name__}: {e}".strip()


def _convert_batch(items: list) -> tuple[list, list[dict[int, bytes]]]:
    """Outcomes per item (None if kept, else (name, reason)) and the kept images in order."""
    outcomes, kept = [], []
    for it in items:
        name, out = _convert(it)
        if isinstance(out, str):
            outcomes.append((name, out))
        else:
            outcomes.append(None)
            kept.append(out)
    return outcomes, kept


def batch_size(max_res: int) -> int:
    """Images per batch: about 16 MiB of pixels at most, so the batches a worker holds stay
    small, and large enough that messages and commits cost nothing (the last batches of a
    conversion shrink so that the workers finish together: `_chunks`)."""
    return max(1, min(MAX_BATCH, BATCH_BYTES // _raw_pyramid_bytes(max_res)))


def _raw_pyramid_bytes(max_res: int) -> int:
    """Bytes of one image's pyramid stored raw, every level from 4 to max_res."""
    return sum(3 * r * r for r in resolutions(max_res))


def _write(store: ShardStore, first: int, images: list[dict[int, bytes]]) -> None:
    try:
        store.put(first, images)
    except (lmdb.Error, OSError) as e:  # disk full, permissions: the conversion ends
        raise UserError(f"writing {_job['output']}: {type(e).__name__}: {e}") from None


def _worker(inbox: Any, outbox: Any, parent: int) -> None:
    """Loop of a worker process: ("convert", j, items) and ("write", j, first, n) messages."""
    store = ShardStore(_job["output"], _job["shard_size"], _job["map_size"])
    held: dict[int, list] = {}
    try:
        while True:
            try:
                msg = inbox.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent:  # the parent was killed: stop, write nothing
                    return
                continue
            if msg is None:
                return
            if msg[0] == "convert":
                _, j, items = msg
                outcomes, held[j] = _convert_batch(items)
                outbox.put(("converted", j, outcomes))
            else:
                _, j, first, n = msg
                _write(store, first, held.pop(j)[:n])
                outbox.put(("written", j, None))
    except UserError as e:
        outbox.put(("error", None, str(e)))
    except Exception as e:
        outbox.put(("error", None, f"a worker process failed: {type(e).__name__}: {e}"))
    finally:
        store.close()


class _Workers:
    """Forked worker processes, each with its own inbox and at most MAX_HELD batches not yet
    written, so memory stays flat however large the input."""

    def __init__(self, n: int):
        ctx = mp.get_context("fork")
        self.outbox = ctx.Queue()
        self.inboxes = [ctx.Queue() for _ in range(n)]
        self.procs = [ctx.Process(target=_worker, args=(q, self.outbox, os.getpid()), daemon=True)
                      for q in self.inboxes]
        for p in self.procs:
            p.start()
        self.held = [0] * n

    def free(self) -> int | None:
        """The least busy worker that can take another batch, or None."""
        w = min(range(len(self.held)), key=self.held.__getitem__)
        return w if self.held[w] < MAX_HELD else None

    def send(self, w: int, msg: tuple) -> None:
        if msg[0] == "convert":
            self.held[w] += 1
        self.inboxes[w].put(msg)

    def written(self, w: int) -> None:
        """Worker `w` has written one of its batches and can take another."""
        self.held[w] -= 1

    def receive(self) -> tuple:
        waited = 0.0
        while True:
            try:
                return self.outbox.get(timeout=1.0)
            except queue.Empty:
                waited += 1.0
            dead = [p for p in self.procs if p.exitcode is not None]
            if dead or waited >= TASK_TIMEOUT:
                why = (f"a worker process died (exit code {dead[0].exitcode})" if dead else
                       f"no worker process answered for {TASK_TIMEOUT} s")
                raise UserError(f"{why}, perhaps crashing on a file; re-run with --workers 0 "
                                "to find the input that causes it")

    def close(self, finished: bool) -> None:
        if finished:
            for q in self.inboxes:
                q.put(None)
            for p in self.procs:
                p.join(10)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
            p.join()
        for q in [*self.inboxes, self.outbox]:
            q.cancel_join_thread()
            q.close()


def _convert_all(source: Source, workers: int, total: int | None, on_batch: Any) -> None:
    """Convert the source batch by batch. `on_batch(items, outcomes)`, called in source order,
    returns (first, n, last): the global index of the batch's first kept image, how many of its
    kept images to write, and whether to stop after this batch."""
    chunks = _chunks(source.items(), batch_size(_job["max_res"]), total, workers)
    if workers > 1:
        _convert_in_workers(chunks, workers, on_batch)
        return
    store = ShardStore(_job["output"], _job["shard_size"], _job["map_size"])
    try:
        for items in chunks:
            outcomes, kept = _convert_batch(items)
            first, n, last = on_batch(items, outcomes)
            _write(store, first, kept[:n])
            if last:
                return
    finally:
        store.close()


def _convert_in_workers(chunks: Iterator[list], workers: int, on_batch: Any) -> None:
    pool = _Workers(workers)
    finished = False
    try:
        _dispatch(pool, chunks, on_batch)
        finished = True
    finally:
        pool.close(finished)


def _dispatch(pool: _Workers, chunks: Iterator[list], on_batch: Any) -> None:
    """Keep every worker supplied with batches; number them in source order as they come
    back, and tell each worker where to write its own."""
    sent: dict[int, tuple[int, list]] = {}  # batch -> (worker, items), until written
    converted: dict[int, list] = {}
    n_sent = next_in_order = 0
    exhausted = stopping = False
    flusher = None
    while True:
        while not (exhausted or stopping) and (w := pool.free()) is not None:
            items = next(chunks, None)
            if items is None:
                exhausted = True
                flusher = flush_in_background(_job["output"])
                break
            pool.send(w, ("convert", n_sent, items))
            sent[n_sent] = (w, items)
            n_sent += 1
        if not sent:
            break
        kind, j, payload = pool.receive()
        if kind == "error":
            raise UserError(payload)
        if kind == "written":
            pool.written(sent.pop(j)[0])
            continue
        converted[j] = payload
        while not stopping and next_in_order in converted:
            j = next_in_order
            first, n, stopping = on_batch(sent[j][1], converted.pop(j))
            pool.send(sent[j][0], ("write", j, first, n))
            next_in_order += 1
        if stopping:  # batches after the last one are dropped unwritten
            for later in [b for b in sent if b >= next_in_order]:
                del sent[later]
    if flusher is not None:
        flusher.join()


def _chunks(items: Iterator, n: int, total: int | None, workers: int) -> Iterator[list]:
    """Lists of up to `n` consecutive items, shrinking over the last few rounds (when `total`
    is known) so that the workers finish together."""
    chunk: list = []
    size, seen = n, 0
    for it in items:
        chunk.append(it)
        if len(chunk) == size:
            yield chunk
            seen += size
            chunk = []
            if total is not None:
                size = max(n // 8, 1, min(n, (total - seen) // (4 * max(workers, 1))))
    if chunk:
        yield chunk


# ---- output directory --------------------------------------------------------------------


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
    per_image = _raw_pyramid_bytes(max_res) + 16 * len(resolutions(max_res))  # + keys
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
    prepare_output(output, overwrite)
    _job.clear()
    _job.update(source=source, max_res=max_res, enc=enc, quality=jpeg_quality, output=output,
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
            _convert_all(source, workers, total_hint, on_batch)
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
