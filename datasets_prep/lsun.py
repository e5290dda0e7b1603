"""LSUN's own distributed LMDB (e.g. `bedroom_train_lmdb/`): keys are hex image ids, values
webp or jpeg bytes. Images are center-cropped to a square, then resized."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import lmdb

from progressive.core.errors import UserError
from progressive.core.images import Reject, open_image
from progressive.data.sources import Source

_envs: dict[tuple[int, str], lmdb.Environment] = {}


def _open(path: str) -> lmdb.Environment:
    """Read-only, lock-free, one environment per process. An environment open in the parent
    when workers fork cannot be opened again in them, so the parent closes it (`_close`)
    whenever it is done."""
    key = (os.getpid(), path)
    if key not in _envs:
        _envs[key] = lmdb.open(
            path, readonly=True, lock=False, readahead=False, meminit=False, max_readers=1024
        )
    return _envs[key]


def _close(path: str) -> None:
    env = _envs.pop((os.getpid(), path), None)
    if env is not None:
        env.close()


class LSUNSource(Source):
    kind = "lsun"

    def __init__(self, input: str, **options):
        super().__init__(input, **options)
        if not (Path(input) / "data.mdb").is_file():
            raise UserError(f"{input} is not an LSUN LMDB folder (no data.mdb inside)")
        try:
            self._count = _open(str(input)).stat()["entries"]
        except lmdb.Error as e:
            raise UserError(f"{input} is not a readable LMDB ({e})") from None
        finally:
            _close(str(input))

    def items(self) -> Iterator[bytes]:
        # Keys only: the values are read by the workers.
        try:
            with _open(str(self.input)).begin(buffers=False) as txn:
                for key in txn.cursor().iternext(keys=True, values=False):
                    yield bytes(key)
        finally:
            _close(str(self.input))

    def __len__(self) -> int:
        return self._count

    def name(self, item: bytes) -> str:
        return item.decode("ascii", "replace")

    def load(self, item: bytes):
        with _open(str(self.input)).begin(buffers=False) as txn:
            data = txn.get(item)
        if not data:
            raise Reject("empty value")
        return self.name(item), open_image(bytes(data))
