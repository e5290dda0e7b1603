"""A procedural dataset needing no download: a smooth colour gradient with 2-5 soft-edged,
shaded discs, ellipses and rectangles, some striped, plus fine grain. Drawn in continuous
coordinates, so one index gives the same picture at every resolution (detail appears as the
resolution grows), and deterministic per index."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from progressive.core.errors import UserError
from progressive.data.sources import Source

_SEED = 20181220  # fixed: the built-in dataset must be the same on every machine
_EDGE = 0.006  # width of the soft shape edges, in image widths


def _shape_alpha(kind: int, u: np.ndarray, v: np.ndarray, a: float, b: float, edge: float):
    """Coverage of an ellipse (0) or rectangle (1) with half-axes a, b; soft over `edge`."""
    if kind == 0:
        q = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        d = (q - 1.0) * min(a, b)
    else:
        d = np.maximum(np.abs(u) - a, np.abs(v) - b)
    return np.clip(0.5 - d / edge, 0.0, 1.0)


def render(index: int, res: int) -> np.ndarray:
    """Image number `index` of the synthetic dataset at `res` x `res`: (res, res, 3) uint8."""
    if index < 0 or res < 1 or res > 1024:
        raise ValueError(f"render(index={index}, res={res}): need index >= 0, 1 <= res <= 1024")
    rng = np.random.default_rng([_SEED, index])
    t = (np.arange(res, dtype=np.float32) + 0.5) / res
    y, x = t[:, None], t[None, :]
    # Background: a linear gradient between two muted colours, in a random direction.
    c0, c1 = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
    th = float(rng.uniform(0, 2 * np.pi))
    g = (x - 0.5) * np.cos(th) + (y - 0.5) * np.sin(th) + 0.5
    img = c0.astype(np.float32) + (c1 - c0).astype(np.float32) * g[..., None]
    edge = max(_EDGE, 1.0 / res)
    for _ in range(rng.integers(2, 6)):
        kind = int(rng.integers(0, 3))  # 0 disc, 1 rectangle, 2 ellipse
        # Python floats keep the arithmetic in float32 (numpy scalars would promote it).
        r = float(rng.uniform(0.12, 0.28))
        a, b = (r, r) if kind == 0 else (r, r * float(rng.uniform(0.45, 0.9)))
        cx, cy = (float(c) for c in rng.uniform(0.2, 0.8, 2))
        rot = float(rng.uniform(0, np.pi))
        colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        stripes = rng.uniform() < 0.4
        freq, sth = float(rng.uniform(6, 30)), float(rng.uniform(0, np.pi))
        # Work only on the shape's bounding box.
        R = max(a, b) * 1.42 + edge
        i0, i1 = max(int((cy - R) * res), 0), min(int(np.ceil((cy + R) * res)), res)
        j0, j1 = max(int((cx - R) * res), 0), min(int(np.ceil((cx + R) * res)), res)
        if i0 >= i1 or j0 >= j1:
            continue
        dx, dy = x[:, j0:j1] - cx, y[i0:i1, :] - cy
        u = dx * np.cos(rot) + dy * np.sin(rot)
        v = -dx * np.sin(rot) + dy * np.cos(rot)
        alpha = _shape_alpha(1 if kind == 1 else 0, u, v, a, b, edge)
        # Shading: bright towards a highlight up and left of the centre, darker away from it.
        hd = np.sqrt((dx + 0.4 * r) ** 2 + (dy + 0.4 * r) ** 2) / r
        shade = np.clip(1.25 - 0.45 * hd, 0.45, 1.25)
        if stripes:
            shade = shade * (1.0 + 0.12 * np.sin(2 * np.pi * freq * (
                dx * np.cos(sth) + dy * np.sin(sth))))
        fill = colour[None, None, :] * shade[..., None]
        patch = img[i0:i1, j0:j1]
        patch += (fill - patch) * alpha[..., None]
    # Fine grain at a few pixels' scale of a 1024 image, faded out where it would alias.
    f1, f2 = (float(f) for f in rng.uniform(150, 250, 2))
    ph1, ph2 = (float(p) for p in rng.uniform(0, 2 * np.pi, 2))
    amp = 0.02 * min(max(res / (2 * max(f1, f2)) - 1.0, 0.0), 1.0)
    if amp > 0:
        grain = np.sin(2 * np.pi * f1 * x + ph1) * np.sin(2 * np.pi * f2 * y + ph2)
        img += (amp * grain)[..., None]
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


# Held-out images are rendered from indices no training set of a realistic size reaches.
TEST_FIRST = 1_000_000_000


class SyntheticSource(Source):
    """INPUT is the number of images; image i is `render(i, max_res)`. `split="test"` renders
    a disjoint held-out set starting at index `TEST_FIRST`."""

    kind = "synthetic"
    crop = "none: rendered at max_res"

    def __init__(self, input: str | int, **options):
        super().__init__(str(input), **options)
        try:
            self.count = int(input)
        except ValueError:
            raise UserError(f"synthetic INPUT must be an image count, not {input!r}") from None
        if self.count <= 0:
            raise UserError(f"synthetic INPUT must be a positive image count, not {input!r}")
        self.max_res = 1024
        self.first = TEST_FIRST if options.get("split") == "test" else 0

    def prepare(self, max_res: int) -> None:
        self.max_res = max_res

    def items(self) -> Iterator[int]:
        yield from range(self.first, self.first + self.count)

    def __len__(self) -> int:
        return self.count

    def load(self, item: int):
        return f"synthetic/{item}", render(item, self.max_res)
