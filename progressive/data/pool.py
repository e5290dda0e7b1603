"""The dataset writer's worker pool: converting batches of a source in parallel processes.

The source is cut into small batches of consecutive items. A worker converts a batch, keeps
the encoded images and tells the parent which items it rejected; the parent, taking batches
in source order, gives each its first global index and the number of images to keep, and
the worker writes them into the shards itself. Only item lists and short outcome lists
cross process boundaries, never pixels.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
from collections.abc import Iterator
from typing import Any

import lmdb

from progressive.core import images as im
from progressive.core.errors import UserError
from progressive.core.resolutions import resolutions
from progressive.data.shards import ShardStore, flush_in_background
from progressive.data.sources import Source

MAX_BATCH = 128  # images converted and written as one unit, at most
BATCH_BYTES = 16 << 20  # and at most about this many raw pixel bytes
MAX_HELD = 3  # batches a worker may have been given and not yet written
TASK_TIMEOUT = 600  # seconds without any answer from the workers: one is stuck on a file

# What the workers need, set by the writer before they start (inherited by fork).
JOB: dict[str, Any] = {}


def _convert(item: Any) -> tuple[str, dict[int, bytes] | str]:
    """(name, {res: bytes}) or (name, reason) for one item; never raises for bad input."""
    source: Source = JOB["source"]
    try:
        name = source.name(item)
    except Exception:
        name = repr(item)[:200]
    try:
        name, img = source.load(item)
        x = im.crop_resize(img, JOB["max_res"])
        levels = im.pyramid(x)
        return name, {r: im.encode(levels[r], e, JOB["quality"]) for r, e in JOB["enc"].items()}
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
    return max(1, min(MAX_BATCH, BATCH_BYTES // raw_pyramid_bytes(max_res)))


def raw_pyramid_bytes(max_res: int) -> int:
    """Bytes of one image's pyramid stored raw, every level from 4 to max_res."""
    return sum(3 * r * r for r in resolutions(max_res))


def _write(store: ShardStore, first: int, images: list[dict[int, bytes]]) -> None:
    try:
        store.put(first, images)
    except (lmdb.Error, OSError) as e:  # disk full, permissions: the conversion ends
        raise UserError(f"writing {JOB['output']}: {type(e).__name__}: {e}") from None


def _worker(inbox: Any, outbox: Any, parent: int) -> None:
    """Loop of a worker process: ("convert", j, items) and ("write", j, first, n) messages."""
    store = ShardStore(JOB["output"], JOB["shard_size"], JOB["map_size"])
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


def convert_all(source: Source, workers: int, total: int | None, on_batch: Any) -> None:
    """Convert the source batch by batch. `on_batch(items, outcomes)`, called in source order,
    returns (first, n, last): the global index of the batch's first kept image, how many of its
    kept images to write, and whether to stop after this batch."""
    chunks = _chunks(source.items(), batch_size(JOB["max_res"]), total, workers)
    if workers > 1:
        _convert_in_workers(chunks, workers, on_batch)
        return
    store = ShardStore(JOB["output"], JOB["shard_size"], JOB["map_size"])
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
                flusher = flush_in_background(JOB["output"])
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
