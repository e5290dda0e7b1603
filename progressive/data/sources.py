"""The source interface: the parent lists cheap picklable items, workers turn each into an
image."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image


class Source:
    """A dataset source.

    `items()` runs in the parent and yields small picklable items (paths, member names, keys,
    raw rows) in source order; `load(item)` runs in a worker process and returns
    `(name, image)` with a PIL image or an (H, W, 3) uint8 array, raising `Reject` (or any
    exception) for bad input. Sources must not keep unpicklable state that workers need:
    open files lazily, per process.
    """

    kind = "source"
    # What happens before the writer's center square crop (e.g. CelebA's face box).
    crop = "center square crop (side = shorter edge)"
    # Largest --max-res the source can serve (None: depends on each image).
    native_res: int | None = None

    def __init__(self, input: str, **options: Any):
        self.input = input
        self.options = options

    def prepare(self, max_res: int) -> None:
        """Called by the writer before `items()`, in the parent, before workers start."""

    def items(self) -> Iterator[Any]:
        raise NotImplementedError

    def load(self, item: Any) -> tuple[str, Image.Image | np.ndarray]:
        raise NotImplementedError

    def name(self, item: Any) -> str:
        """A name for `item` in error reports, cheap, in the parent."""
        return str(item)

    def label(self, item: Any) -> int | None:
        """Class label of `item`, if the source has labels."""
        return None

    def __len__(self) -> int:
        raise NotImplementedError

    def split_info(self) -> dict | None:
        """The split description recorded in meta.json, or None."""
        return None

    def describe(self) -> dict:
        """The `source` entry of meta.json."""
        return {"kind": self.kind, "input": str(self.input), "options": dict(self.options)}


class PlanarRowSource(Source):
    """A source whose items are `(name, row bytes, label)`, each row a square RGB image stored
    channel-planar (CHW), as in the CIFAR-10 and downsampled-ImageNet batches."""

    side = 32

    def name(self, item: Any) -> str:
        return item[0]

    def label(self, item: Any) -> int:
        return item[2]

    def load(self, item: Any):
        name, row, _ = item
        s = self.side
        hwc = np.frombuffer(row, np.uint8).reshape(3, s, s).transpose(1, 2, 0)
        return name, Image.fromarray(np.ascontiguousarray(hwc), "RGB")
