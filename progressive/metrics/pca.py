"""Principal components of a set of images within a memory budget, at any resolution.

The reconstruction and density baselines need the top principal directions of training
images. At 1024 px an image has 3.1M values, so neither the pixel covariance nor the basis
(values x components) fits in memory. Two ways, chosen by size:

- covariance: fewer values per image than images; the covariance (values x values) is summed
  chunk by chunk and eigen-decomposed; the basis is kept.
- gram: otherwise; the Gram matrix of the centred images (images x images) is summed from
  pairs of chunks and eigen-decomposed. The basis is never formed: a direction is a weighted
  sum of the training images, which are kept as given (uint8: 3 bytes a pixel) and streamed
  through for every projection.

Training images beyond what the budget holds are left out, evenly spaced over the set; the
returned fit says how many it used and how (`describe`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from progressive.core.images import to_float

PCA_MEMORY = 2 * 2**30  # bytes the fit may hold: its training images and one chunk's products
CHUNK_BYTES = 256 * 2**20  # one chunk of images as float rows
EXACT_VALUES = 16384  # up to this many values per image the products run in float64

Reader = Callable[[list[int]], Tensor]


def fit_count(count: int, values: int, budget: int = PCA_MEMORY) -> int:
    """How many of `count` images (of `values` uint8 values each) a fit within `budget` uses:
    all when they fit beside one chunk, else as many as do (at least 2)."""
    room = max(0, budget - CHUNK_BYTES) // max(1, values)
    return max(min(count, 2), min(count, room))


def pick(count: int, n: int) -> list[int]:
    """`n` of `count` indices: all of the first `n` when n = count, else evenly spaced."""
    return list(range(count)) if n >= count else [i * count // n for i in range(n)]


def _dtype(values: int) -> torch.dtype:
    return torch.float64 if values <= EXACT_VALUES else torch.float32


def _rows(images: Tensor, dtype: torch.dtype) -> Tensor:
    return to_float(images).flatten(1).to(dtype)


def _chunk(values: int) -> int:
    return max(1, CHUNK_BYTES // (values * 8))


def fit(images: Tensor, budget: int = PCA_MEMORY) -> dict:
    """Mean (1, D) float64, variances along every direction (descending), and the directions
    (explicit `basis` rows, or `weights` over the kept `train` images) of `images` (uint8, or
    float in [-1, 1]), in chunks. `images` is what the budget allows (see `fit_count`)."""
    n, values = len(images), images[0].numel()
    dtype, step = _dtype(values), _chunk(values)
    spans = [(i, min(i + step, n)) for i in range(0, n, step)]
    total = torch.zeros(values, dtype=torch.float64)
    for a, b in spans:
        total += _rows(images[a:b], torch.float64).sum(0)
    mean = (total / n)[None]
    if values < n:
        cov = torch.zeros(values, values, dtype=torch.float64)
        for a, b in spans:
            x = _rows(images[a:b], torch.float64) - mean
            cov += x.T @ x
        eigen, vectors = torch.linalg.eigh(cov)
        out = {"basis": vectors.flip(1).T, "method": "covariance"}
    else:
        gram = torch.zeros(n, n, dtype=torch.float64)
        for i, (a, b) in enumerate(spans):
            xa = _rows(images[a:b], dtype) - mean.to(dtype)
            for c, d in spans[i:]:
                xc = xa if c == a else _rows(images[c:d], dtype) - mean.to(dtype)
                block = (xa @ xc.T).double()
                gram[a:b, c:d] = block
                gram[c:d, a:b] = block.T
        eigen, vectors = torch.linalg.eigh(gram)
        top, vectors = eigen.flip(0), vectors.flip(1)
        # u_j = X_c^T v_j / sqrt(lambda_j): unit directions as weights over the images.
        weights = vectors / top.clamp_min(1e-12).sqrt()
        weights[:, top <= 1e-12 * top[0].clamp_min(1e-300)] = 0
        out = {"weights": weights, "train": images, "method": "gram"}
    variance = eigen.flip(0).clamp_min(0) / max(n - 1, 1)
    return {"mean": mean, "variance": variance, "images": n, **out}


def describe(pca: dict, of: int | None = None, budget: int = PCA_MEMORY) -> dict:
    """How a fit was computed, for the record: images used (of how many), method, budget."""
    out = {"images": pca["images"], "method": pca["method"], "memory_budget": budget}
    if of is not None:
        out["of"] = of
    return out


def coefficients(pca: dict, images: Tensor, components: int) -> Tensor:
    """Coordinates (N, k) float64 of images along the top `components` directions."""
    values = pca["mean"].shape[-1]
    if "basis" in pca:
        return (_rows(images, torch.float64) - pca["mean"]) @ pca["basis"][:components].T
    dtype, step, train = _dtype(values), _chunk(values), pca["train"]
    y = _rows(images, dtype) - pca["mean"].to(dtype)
    cross = torch.zeros(len(train), len(images), dtype=torch.float64)
    for a in range(0, len(train), step):
        x = _rows(train[a : a + step], dtype) - pca["mean"].to(dtype)
        cross[a : a + step] = (x @ y.T).double()
    return (pca["weights"][:, :components].T @ cross).T


def back(pca: dict, coords: Tensor) -> Tensor:
    """Images (N, D) float64 from their coordinates (N, k) along the top k directions, mean
    included."""
    k = coords.shape[1]
    if "basis" in pca:
        return coords @ pca["basis"][:k] + pca["mean"]
    values = pca["mean"].shape[-1]
    dtype, step, train = _dtype(values), _chunk(values), pca["train"]
    mix = pca["weights"][:, :k] @ coords.T  # (train, N): each output a sum of training images
    out = pca["mean"].expand(len(coords), -1).clone()
    for a in range(0, len(train), step):
        x = _rows(train[a : a + step], dtype) - pca["mean"].to(dtype)
        out += (mix[a : a + step].T.to(dtype) @ x).double()
    return out


def usable(pca: dict, components: int) -> int:
    """Components that can be used: at most one fewer than the images or values fitted."""
    return min(components, len(pca["variance"]) - 1)


def chunks(images: Tensor) -> list[Tensor]:
    """`images` in slices small enough to hold as float64 rows (`CHUNK_BYTES`)."""
    step = _chunk(images[0].numel())
    return [images[i : i + step] for i in range(0, len(images), step)]
