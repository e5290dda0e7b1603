"""CelebA `img_align_celeba` (178x218 aligned faces): the progressive-GAN face crop and the
divergence-triangle paper's random 9,000 / 1,000 train/test split."""

from __future__ import annotations

import hashlib

import numpy as np

from progressive.core.errors import UserError
from progressive.core.images import Reject

from .files import FolderSource

# The 128x128 box centred at (x=89, y=121) of the 178x218 aligned image, as in the
# progressive-GAN CelebA preparation: it holds the face with little background.
CENTER = (89, 121)
BOX = 128
SPLIT_SIZES = (9000, 1000)
SPLIT_METHOD = (
    "sort file names; numpy.random.default_rng(seed).permutation; the first sizes[0] are "
    "train, the next sizes[1] test; each split kept in file-name order"
)


def celeba_split(
    names: list[str], seed: int = 0, sizes: tuple[int, int] = SPLIT_SIZES
) -> tuple[list[str], list[str]]:
    """Random, reproducible, disjoint (train, test) file-name lists of the given sizes."""
    names = sorted(names)
    n_train, n_test = sizes
    if n_train + n_test > len(names):
        raise UserError(
            f"the CelebA split needs {n_train + n_test} images but the folder has {len(names)}"
        )
    order = np.random.default_rng(seed).permutation(len(names))
    train = sorted(names[i] for i in order[:n_train])
    test = sorted(names[i] for i in order[n_train : n_train + n_test])
    return train, test


class CelebASource(FolderSource):
    """`img_align_celeba`: every image, or the train or test part of the paper's split."""

    kind = "celeba"
    crop = f"{BOX}x{BOX} box centred at (x={CENTER[0]}, y={CENTER[1]}), then center square"

    def __init__(self, input: str, split: str | None = None, seed: int = 0,
                 split_sizes: tuple[int, int] = SPLIT_SIZES, **options):
        super().__init__(input, split=split, seed=seed, **options)
        self.split = split
        self.seed = seed
        self.split_sizes = tuple(split_sizes)
        if split is not None:
            if split not in ("train", "test"):
                raise UserError(f"--split {split!r} must be train or test")
            train, test = celeba_split(self.names, seed, self.split_sizes)
            self.names = train if split == "train" else test

    def split_info(self) -> dict | None:
        if self.split is None:
            return None
        digest = hashlib.sha256("\n".join(self.names).encode()).hexdigest()
        return {
            "name": self.split,
            "seed": self.seed,
            "sizes": list(self.split_sizes),
            "count": len(self.names),
            "method": SPLIT_METHOD,
            "files_sha256": digest,
        }

    def load(self, item: str):
        name, img = super().load(item)
        w, h = img.size
        x0, y0 = CENTER[0] - BOX // 2, CENTER[1] - BOX // 2
        if x0 < 0 or y0 < 0 or x0 + BOX > w or y0 + BOX > h:
            raise Reject(f"{w}x{h} is too small for the CelebA crop; expected 178x218")
        return name, img.crop((x0, y0, x0 + BOX, y0 + BOX))
