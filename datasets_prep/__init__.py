"""Dataset preparation: turn image collections into progressive-lmdb datasets.

    from datasets_prep import make_source, write_dataset
    meta = write_dataset(make_source("synthetic", "1000"), "data/synth64", 64)
"""

from __future__ import annotations

from typing import Any

from progressive.core.errors import UserError
from progressive.data.sources import Source
from progressive.data.synthetic import SyntheticSource
from progressive.data.writer import write_dataset

from .celeba import CelebASource
from .cifar10 import CIFAR10Source
from .files import FolderSource, ZipSource, celebahq
from .imagenet32 import ImageNet32Source
from .lsun import LSUNSource

# Each SOURCE name and what builds it from (input, **options).
_CLASSES = {"folder": FolderSource, "zip": ZipSource, "celebahq": celebahq, "lsun": LSUNSource,
            "celeba": CelebASource, "cifar10": CIFAR10Source, "imagenet32": ImageNet32Source,
            "synthetic": SyntheticSource}
SOURCES = tuple(_CLASSES)


def make_source(kind: str, input: str, **options: Any) -> Source:
    """Build a source by name. Options: `split` (celeba, cifar10, imagenet32, synthetic), `seed` and
    `split_sizes` (celeba). For synthetic, `input` is the image count."""
    options = {k: v for k, v in options.items() if v is not None}
    if kind not in _CLASSES:
        raise UserError(f"unknown SOURCE {kind!r}; choose one of {', '.join(SOURCES)}")
    if "split" in options and kind not in ("celeba", "cifar10", "imagenet32", "synthetic"):
        raise UserError(f"--split applies to celeba, cifar10, imagenet32 and synthetic, not {kind}")
    return _CLASSES[kind](input, **options)


__all__ = ["SOURCES", "Source", "UserError", "make_source", "write_dataset"]
