"""CIFAR-10 from `cifar-10-python.tar.gz` or its extracted `cifar-10-batches-py/`.

The batches are pickles of dicts holding numpy arrays, lists and bytes. Unpickling runs code
named inside the file, so we never call pickle.load on them: `_SafeUnpickler` resolves only the
numpy names needed to rebuild an array and refuses every other global.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from progressive.core.errors import UserError
from progressive.data.sources import PlanarRowSource

TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = ["test_batch"]
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _SafeUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, bytes and numpy arrays; any other class is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_batch(data: bytes, where: str) -> tuple[np.ndarray, list[int]]:
    """(N, 3072) uint8 rows in CHW planar order and N labels from one pickled batch."""
    try:
        d = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
        d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
        rows = np.asarray(d["data"])
        labels = [int(v) for v in d["labels"]]
    except Exception as e:
        raise UserError(f"{where} is not a CIFAR-10 batch ({type(e).__name__}: {e})") from None
    if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3072:
        raise UserError(f"{where}: data is {rows.dtype} {rows.shape}, expected uint8 (N, 3072)")
    if len(labels) != len(rows):
        raise UserError(f"{where}: {len(labels)} labels for {len(rows)} images")
    return rows, labels


class CIFAR10Source(PlanarRowSource):
    kind = "cifar10"
    native_res = 32

    def __init__(self, input: str, split: str | None = None, **options):
        split = split or "train"
        if split not in ("train", "test"):
            raise UserError(f"--split {split!r} must be train or test")
        super().__init__(input, split=split, **options)
        self.split = split
        self.batches = TRAIN if split == "train" else TEST
        p = Path(input)
        if p.is_dir():
            if (p / "cifar-10-batches-py").is_dir():
                p = p / "cifar-10-batches-py"
            missing = [b for b in self.batches if not (p / b).is_file()]
            if missing:
                raise UserError(f"{input} lacks {', '.join(missing)}; pass cifar-10-batches-py")
            self.folder, self.tar = p, None
        elif p.is_file():
            try:
                with tarfile.open(p) as tf:
                    names = {Path(m.name).name: m.name for m in tf.getmembers() if m.isfile()}
            except (tarfile.TarError, OSError) as e:
                raise UserError(f"{input} is not a readable tar file ({e})") from None
            missing = [b for b in self.batches if b not in names]
            if missing:
                raise UserError(f"{input} lacks {', '.join(missing)}; pass cifar-10-python.tar.gz")
            self.folder, self.tar = None, {b: names[b] for b in self.batches}
        else:
            raise UserError(f"{input} does not exist; pass cifar-10-python.tar.gz or its folder")

    def _batches(self) -> Iterator[tuple[str, np.ndarray, list[int]]]:
        """One batch in memory at a time (30 MB)."""
        if self.folder is not None:
            for b in self.batches:
                yield (b, *load_batch((self.folder / b).read_bytes(), str(self.folder / b)))
            return
        with tarfile.open(self.input) as tf:
            for b in self.batches:
                data = tf.extractfile(self.tar[b]).read()
                yield (b, *load_batch(data, f"{self.input}:{self.tar[b]}"))

    def items(self) -> Iterator[tuple[str, bytes, int]]:
        for b, rows, labels in self._batches():
            for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
                yield f"{b}/{i}", row.tobytes(), label

    def __len__(self) -> int:
        # Exact (not 10,000 per batch) so --shards splits evenly; costs one extra read.
        if not hasattr(self, "_count"):
            self._count = sum(len(labels) for _, _, labels in self._batches())
        return self._count
