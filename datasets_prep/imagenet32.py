"""Downsampled ImageNet (32x32; 64x64 works the same) from its npz batches:
`train_data_batch_1..10` and `val_data`, with or without the .npz extension. Each holds
`data` (N, 3*S*S) uint8 in CHW planar order and `labels` (1-based classes).

The `data` array is streamed out of the npz a few thousand rows at a time (no pickles, and a
400 MB batch never sits in memory whole); `labels` is read with np.load(allow_pickle=False).
"""

from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from progressive.core.errors import UserError
from progressive.data.sources import PlanarRowSource

_ROWS = 4096


def _find(folder: Path, split: str) -> list[Path]:
    pattern = r"train_data_batch_(\d+)(\.npz)?" if split == "train" else r"val_data(\.npz)?"
    found = [p for p in folder.iterdir() if re.fullmatch(pattern, p.name)]
    if split == "train":
        found.sort(key=lambda p: int(re.findall(r"\d+", p.name)[0]))
    return found


def _open_data(path: Path) -> tuple[zipfile.ZipFile, object, tuple[int, int]]:
    """Open `data.npy` inside the npz as a stream positioned after its header."""
    try:
        z = zipfile.ZipFile(path)
        f = z.open("data.npy")
        version = np.lib.format.read_magic(f)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read(f)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
        raise UserError(
            f"{path} is not an ImageNet32 npz batch with a data array ({e}); "
            "download the npz version of the batches"
        ) from None
    if dtype != np.uint8 or len(shape) != 2 or fortran:
        raise UserError(f"{path}: data is {dtype} {shape}, expected C-ordered uint8 (N, 3*S*S)")
    side = math.isqrt(shape[1] // 3)
    if 3 * side * side != shape[1]:
        raise UserError(f"{path}: rows of {shape[1]} values are not square RGB images")
    return z, f, shape


class ImageNet32Source(PlanarRowSource):
    kind = "imagenet32"

    def __init__(self, input: str, split: str | None = None, **options):
        split = split or "train"
        if split not in ("train", "test"):
            raise UserError(f"--split {split!r} must be train or test")
        super().__init__(input, split=split, **options)
        folder = Path(input)
        if not folder.is_dir():
            raise UserError(f"{input} is not a folder; pass the folder of ImageNet32 npz batches")
        self.files = _find(folder, split)
        if not self.files:
            want = "train_data_batch_N[.npz]" if split == "train" else "val_data[.npz]"
            raise UserError(f"{input} holds no {want} files")
        self.counts, sides = [], set()
        for p in self.files:
            z, f, shape = _open_data(p)
            f.close()
            z.close()
            self.counts.append(shape[0])
            sides.add(math.isqrt(shape[1] // 3))
        if len(sides) != 1:
            raise UserError(f"{input}: batches hold images of different sizes {sorted(sides)}")
        self.side = self.native_res = sides.pop()

    def _labels(self, path: Path, n: int) -> np.ndarray:
        try:
            with np.load(path, allow_pickle=False) as npz:
                labels = np.asarray(npz["labels"]).reshape(-1)
        except (KeyError, ValueError, OSError) as e:
            raise UserError(f"{path}: cannot read labels ({e})") from None
        if len(labels) != n:
            raise UserError(f"{path}: {len(labels)} labels for {n} images")
        return labels

    def items(self) -> Iterator[tuple[str, bytes, int]]:
        for path, n in zip(self.files, self.counts, strict=True):
            labels = self._labels(path, n)
            z, f, shape = _open_data(path)
            with z, f:
                width, i = shape[1], 0
                while i < n:
                    k = min(_ROWS, n - i)
                    buf = f.read(k * width)
                    if len(buf) != k * width:
                        raise UserError(f"{path}: data ends after {i} of {n} rows")
                    rows = np.frombuffer(buf, np.uint8).reshape(k, width)
                    for j in range(k):
                        yield f"{path.name}/{i + j}", rows[j].tobytes(), int(labels[i + j])
                    i += k

    def __len__(self) -> int:
        return sum(self.counts)
