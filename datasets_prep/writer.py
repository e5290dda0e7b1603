"""Write a source into a progressive-lmdb dataset: workers decode, crop, resize, build the
pyramid and encode; the parent writes LMDB shards in source order and meta.json last."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import multiprocessing.pool
import os
import re
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lmdb
from tqdm import tqdm

from progressive import __version__
from progressive.dataset_format import (
    FORMAT,
    META_NAME,
    REJECTED_NAME,
    VERSION,
    image_key,
    resolutions_up_to,
    shard_name,
    write_json_atomic,
)
from progressive.errors import UserError

from . import image as im
from .base import Source

LABELS_NAME = "labels.json"
COMMIT_EVERY = 256  # images per LMDB transaction, or
COMMIT_BYTES = 64 << 20  # whichever comes first: keeps 1024x1024 batches small in memory
TASK_TIMEOUT = 600  # seconds: a task this late means its worker died (a decoder crash)
INITIAL_MAP = 256 << 20
_OURS = re.compile(r"(shard-\d{5}\.lmdb|rejected\.jsonl|labels\.json|meta\.json|\..*\.tmp-\d+)")


def encodings_for(max_res: int, encoding: str) -> dict[int, str]:
    """Encoding per resolution; "auto" is raw up to 256 (PNG decoding would dominate reading
    there) and PNG above."""
    if encoding not in ("auto", "raw", "png", "jpeg"):
        raise UserError(f"--encoding {encoding!r} must be auto, png, jpeg or raw")
    res = resolutions_up_to(max_res)
    if encoding == "auto":
        return {r: "raw" if r <= 256 else "png" for r in res}
    return dict.fromkeys(res, encoding)


# ---- worker side -------------------------------------------------------------------------

_job: dict[str, Any] = {}


def _init_worker(source: Source, max_res: int, enc: dict[int, str], quality: int) -> None:
    _job.update(source=source, max_res=max_res, enc=enc, quality=quality)


def _process(item: Any) -> tuple[str, dict[int, bytes] | str]:
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


def _process_chunk(items: list) -> list:
    return [_process(it) for it in items]


def _chunks(items: Iterator, n: int) -> Iterator[list]:
    chunk = []
    for it in items:
        chunk.append(it)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _results(source: Source, workers: int, labels: deque | None) -> Iterator[tuple]:
    """(name, encoded-or-reason, label) in source order, with at most a few chunks per worker
    in flight, so memory stays flat however large the input."""
    items = source.items()
    if labels is not None:
        items = _with_labels(source, items, labels)
    # Few images per task at high resolution, so the in-flight window stays small in memory.
    chunk_size = 16 if _job["max_res"] <= 128 else 8 if _job["max_res"] <= 256 else 2
    if workers <= 1:
        for chunk in _chunks(items, chunk_size):
            yield from _process_chunk(chunk)
        return
    ctx = mp.get_context("fork")
    args = (source, _job["max_res"], _job["enc"], _job["quality"])
    pool = ctx.Pool(workers, initializer=_init_worker, initargs=args)
    try:
        window: deque = deque()
        for chunk in _chunks(items, chunk_size):
            window.append(pool.apply_async(_process_chunk, (chunk,)))
            if len(window) >= 2 * workers + 2:
                yield from _get(window.popleft())
        while window:
            yield from _get(window.popleft())
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _get(task: mp.pool.AsyncResult) -> list:
    try:
        return task.get(TASK_TIMEOUT)
    except mp.TimeoutError:
        raise UserError(
            f"a worker process gave no answer for {TASK_TIMEOUT} s (it may have crashed on a "
            "file); re-run with --workers 0 to find the input that causes it"
        ) from None


def _with_labels(source: Source, items: Iterator, labels: deque) -> Iterator:
    # Labels travel in a parallel FIFO: the parent knows them cheaply, workers need not.
    for it in items:
        labels.append(source.label(it))
        yield it


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
        _fsync_dir(output)
    for e in entries:
        if e.exists():
            shutil.rmtree(e) if e.is_dir() else e.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _ShardWriter:
    """Writes images to consecutive shards, committing in batches and growing the map."""

    def __init__(self, output: Path, shard_size: int):
        self.output, self.shard_size = output, shard_size
        self.shards: list[dict] = []
        self.env: lmdb.Environment | None = None
        self.pending: list[tuple[bytes, bytes]] = []
        self.pending_bytes = 0
        self.count = 0

    def add(self, index: int, encoded: dict[int, bytes]) -> None:
        if index % self.shard_size == 0:
            self._flush()
            self._open(len(self.shards))
            self.shards.append({"path": shard_name(len(self.shards)), "first": index, "count": 0})
        self.pending.extend((image_key(r, index), v) for r, v in encoded.items())
        self.pending_bytes += sum(len(v) for v in encoded.values())
        self.shards[-1]["count"] += 1
        self.count += 1
        if self.count % COMMIT_EVERY == 0 or self.pending_bytes >= COMMIT_BYTES:
            self._flush()

    def _open(self, i: int) -> None:
        if self.env is not None:
            self.env.sync(True)
            self.env.close()
        # No fsync per commit: a crash mid-way loses the run anyway (no meta.json); `close`
        # syncs each shard once before meta.json is written.
        self.env = lmdb.open(
            str(self.output / shard_name(i)), map_size=INITIAL_MAP, readahead=False,
            meminit=False, max_dbs=0, sync=False, metasync=False,
        )

    def _flush(self) -> None:
        if not self.pending:
            return
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for k, v in self.pending:
                        txn.put(k, v)
                break
            except lmdb.MapFullError:  # the aborted batch is retried with a doubled map
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
        self.pending.clear()
        self.pending_bytes = 0

    def close(self) -> None:
        self._flush()
        if self.env is not None:
            self.env.sync(True)
            self.env.close()
            self.env = None


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


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
) -> dict:
    """Convert `source` into a dataset at `output`; returns the meta dict written to meta.json.

    Bad inputs are listed in rejected.jsonl and skipped (with `strict`, the first one is a
    `UserError`). meta.json is written last: an interrupted run leaves none."""
    output = Path(output)
    res_list = resolutions_up_to(max_res)
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
    if shards is not None:
        if shards < 1:
            raise UserError(f"--shards {shards} must be at least 1")
        total = len(source) if max_images is None else min(len(source), max_images)
        shard_size = max(1, math.ceil(total / shards))
    if shard_size < 1:
        raise UserError(f"--shard-size {shard_size} must be at least 1")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 0:
        raise UserError(f"--workers {workers} must be 0 or more")
    try:
        total_hint = len(source)
    except (NotImplementedError, TypeError):
        total_hint = None
    if max_images is not None and total_hint is not None:
        total_hint = min(total_hint, max_images)

    source.prepare(max_res)
    prepare_output(output, overwrite)
    _job.clear()
    _init_worker(source, max_res, enc, jpeg_quality)
    labels: deque | None = deque() if type(source).label is not Source.label else None
    kept_labels: list = []
    writer = _ShardWriter(output, shard_size)
    rejected = 0
    start = time.perf_counter()
    bar = tqdm(total=total_hint, unit="img", disable=not progress, file=sys.stderr)
    results = _results(source, workers, labels)
    with open(output / REJECTED_NAME, "w") as rej:
        try:
            for name, out in results:
                bar.update(1)
                label = labels.popleft() if labels is not None else None
                if isinstance(out, str):
                    if strict:
                        raise UserError(f"{name}: {out} (stopped by --strict)")
                    rejected += 1
                    rej.write(json.dumps({"path": name, "reason": out}) + "\n")
                    bar.set_postfix(rejected=rejected, refresh=False)
                    continue
                if labels is not None:
                    kept_labels.append(label)
                writer.add(writer.count, out)
                if max_images is not None and writer.count >= max_images:
                    break
        finally:
            results.close()  # stops the workers now, also on --max-images and errors
            bar.close()
            writer.close()
        rej.flush()
        os.fsync(rej.fileno())
    if writer.count == 0:
        raise UserError(
            f"no usable images in {source.input} ({rejected} rejected; see "
            f"{output / REJECTED_NAME})"
        )
    elapsed = time.perf_counter() - start
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "count": writer.count,
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
        "shards": writer.shards,
        "rejected": rejected,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tool": {"name": "tools/make_lmdb.py", "version": __version__},
        "elapsed_s": round(elapsed, 3),
    }
    if "jpeg" in enc.values():
        meta["jpeg_quality"] = jpeg_quality
        meta["jpeg_subsampling"] = im.JPEG_SUBSAMPLING
    if labels is not None:
        write_json_atomic(output / LABELS_NAME, kept_labels)
        meta["labels"] = LABELS_NAME
    write_json_atomic(output / META_NAME, meta)
    meta["size_bytes"] = _dir_size(output)
    return meta
