"""Dataset preparation: turn image collections into progressive-lmdb datasets.

    from datasets_prep import make_source, write_dataset
    meta = write_dataset(make_source("synthetic", "1000"), "data/synth64", 64)
"""

from __future__ import annotations

from typing import Any

from progressive.core.errors import UserError
from progressive.data.sources import Source
from progressive.data.writer import write_dataset

SOURCES = ("folder", "zip", "celebahq", "lsun", "celeba", "cifar10", "imagenet32", "synthetic")


def make_source(kind: str, input: str, **options: Any) -> Source:
    """Build a source by name. Options: `split` (celeba, cifar10, imagenet32, synthetic), `seed` and
    `split_sizes` (celeba). For synthetic, `input` is the image count."""
    options = {k: v for k, v in options.items() if v is not None}
    if kind == "folder":
        from .files import FolderSource as cls
    elif kind == "zip":
        from .files import ZipSource as cls
    elif kind == "celebahq":
        from .files import celebahq as cls
    elif kind == "lsun":
        from .lsun import LSUNSource as cls
    elif kind == "celeba":
        from .celeba import CelebASource as cls
    elif kind == "cifar10":
        from .cifar10 import CIFAR10Source as cls
    elif kind == "imagenet32":
        from .imagenet32 import ImageNet32Source as cls
    elif kind == "synthetic":
        from progressive.data.synthetic import SyntheticSource as cls
    else:
        raise UserError(f"unknown SOURCE {kind!r}; choose one of {', '.join(SOURCES)}")
    if "split" in options and kind not in ("celeba", "cifar10", "imagenet32", "synthetic"):
        raise UserError(f"--split applies to celeba, cifar10, imagenet32 and synthetic, not {kind}")
    return cls(input, **options)


__all__ = ["SOURCES", "Source", "UserError", "make_source", "write_dataset"]
