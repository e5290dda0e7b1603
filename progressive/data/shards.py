"""Writing LMDB shards: consecutive global indices go to shard `index // shard_size`. Several
processes may write the same shard at once; LMDB serialises their transactions."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import lmdb

from progressive.core.files import fsync_path
from progressive.data.format import image_key, seal, shard_name

REOPEN_BYTES = 32 << 20


def shard_table(count: int, shard_size: int) -> list[dict]:
    """The `shards` entry of meta.json for `count` images."""
    return [
        {"path": shard_name(k), "first": k * shard_size,
         "count": min(shard_size, count - k * shard_size)}
        for k in range(math.ceil(count / shard_size))
    ]


class ShardStore:
    """One process's handles on a dataset's shards, opened on first write."""

    def __init__(self, output: Path, shard_size: int, map_size: int):
        self.output, self.shard_size, self.map_size = Path(output), shard_size, map_size
        self.envs: dict[int, lmdb.Environment] = {}
        self.written = 0  # bytes since the handles were last reopened

    def _env(self, k: int) -> lmdb.Environment:
        if k not in self.envs:
            # No fsync per commit: a crash mid-way loses the run anyway (no meta.json);
            # `sync_shards` syncs each shard once before meta.json is written.
            map_size = self.map_size
            while k not in self.envs:
                try:
                    self.envs[k] = lmdb.open(
                        str(self.output / shard_name(k)), map_size=map_size, readahead=False,
                        meminit=False, max_dbs=0, sync=False, metasync=False,
                    )
                except lmdb.MapResizedError:
                    # Opening reads the shard in a transaction, which fails when another
                    # process has grown the map past ours: open with a larger one.
                    map_size *= 2
        return self.envs[k]

    def put(self, first: int, images: list[dict[int, bytes]]) -> None:
        """Store `images[i]` ({res: encoded}) under global index `first + i`, one
        transaction per shard touched."""
        i = 0
        while i < len(images):
            k = (first + i) // self.shard_size
            end = min(len(images), (k + 1) * self.shard_size - first)
            pairs = [(key, seal(key, v)) for j in range(i, end)
                     for r, v in images[j].items() for key in (image_key(r, first + j),)]
            self._put(k, pairs)
            self.written += sum(len(v) for _, v in pairs)
            i = end
        if self.written >= REOPEN_BYTES:
            # Every leaf page LMDB copies on write is read through its map and stays mapped:
            # a writer's resident memory grows with the shard unless the map is dropped.
            self.close()

    def _put(self, k: int, pairs: list[tuple[bytes, bytes]]) -> None:
        env = self._env(k)
        while True:
            try:
                with env.begin(write=True) as txn:
                    for key, value in pairs:
                        txn.put(key, value)
                return
            except lmdb.MapFullError:  # the aborted batch is retried with a doubled map
                env.set_mapsize(env.info()["map_size"] * 2)
            except lmdb.MapResizedError:  # another process grew it: adopt its size
                env.set_mapsize(0)

    def close(self) -> None:
        for env in self.envs.values():
            env.close()
        self.envs.clear()
        self.written = 0


def sync_shards(output: Path, n_shards: int) -> list[int]:
    """Flush every shard of a finished conversion to disk (before meta.json is written);
    returns each shard's data file size, which meta.json records."""
    sizes = []
    for k in range(n_shards):
        path = Path(output) / shard_name(k)
        env = lmdb.open(str(path), readahead=False, max_dbs=0)
        try:
            env.sync(True)
        finally:
            env.close()
        sizes.append((path / "data.mdb").stat().st_size)
    return sizes


def flush_in_background(output: Path) -> threading.Thread:
    """Start writing what the shards hold so far to disk, while the last batches are still
    being converted, so the sync before meta.json has little left to do. Only a head start:
    `sync_shards` still makes the shards durable and reports errors."""

    def flush() -> None:
        k = 0
        while (data := Path(output) / shard_name(k) / "data.mdb").exists():
            try:
                fsync_path(data)
            except OSError:
                pass
            k += 1

    thread = threading.Thread(target=flush, name="flush-shards", daemon=True)
    thread.start()
    return thread
