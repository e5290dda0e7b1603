"""Read a written dataset back in the parent process: for checks, tests and benchmarks
(the training reader lives in progressive/data.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import lmdb
import numpy as np

from progressive.core.images import decode
from progressive.data.format import image_key, read_meta, unseal


def iter_images(root: str | os.PathLike) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (index, res, (res, res, 3) uint8) for every image of the dataset at `root`."""
    meta = read_meta(root)
    for shard in meta["shards"]:
        env = lmdb.open(str(Path(root) / shard["path"]), readonly=True, lock=False)
        try:
            with env.begin() as txn:
                for index in range(shard["first"], shard["first"] + shard["count"]):
                    for res in meta["resolutions"]:
                        key = image_key(res, index)
                        data = txn.get(key)
                        if data is None:
                            raise KeyError(f"{shard['path']} lacks {key!r}")
                        if meta["version"] >= 2:
                            data = unseal(key, data)
                            if data is None:
                                raise ValueError(f"{shard['path']}: {key!r} fails its checksum")
                        yield index, res, decode(data, meta["encoding"][res], res)
        finally:
            env.close()


def shard_keys(root: str | os.PathLike) -> dict[str, set[bytes]]:
    """{shard path: set of keys in it}."""
    meta = read_meta(root)
    out = {}
    for shard in meta["shards"]:
        env = lmdb.open(str(Path(root) / shard["path"]), readonly=True, lock=False)
        with env.begin() as txn:
            out[shard["path"]] = set(bytes(k) for k in txn.cursor().iternext(values=False))
        env.close()
    return out
