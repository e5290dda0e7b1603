"""The energy along latent walks: one CSV row per frame, and a small curve under the grid.

The curve is drawn with Pillow so each point sits exactly under its grid column: one coloured
line per walk (grid row), the lowest and highest energy written at the left, a legend of the
walks' endpoints at the top.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.utils import make_grid

from progressive.core.files import atomic_write, write_text_atomic
from progressive.core.grids import GRID_PADDING

# Colour-blind-safe categorical colours (Okabe and Ito), then repeated.
COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442", "#000000"]


def energy_csv_path(out: str | os.PathLike) -> Path:
    """Where `interpolate --energy` writes the CSV: beside `out`, named `<stem>-energy.csv`."""
    out = Path(out)
    return out.with_name(f"{out.stem}-energy.csv")


def write_walk_csv(
    path: str | os.PathLike,
    energies: Tensor,
    ends: list[str],
    frames: list[tuple[int, int]] | None = None,
) -> int:
    """CSV `frame, walk, step, t, start, end, energy` written atomically; returns its rows.

    `energies` is (walks, steps); walk w runs from `ends[w]` to `ends[w + 1]`. `frames` lists
    the (walk, step) of each output frame (default: every one, walk by walk).
    """
    walks, steps = energies.shape
    if frames is None:
        frames = [(w, i) for w in range(walks) for i in range(steps)]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["frame", "walk", "step", "t", "start", "end", "energy"])
    for frame, (w, i) in enumerate(frames):
        t = i / (steps - 1)
        value = energies[w, i].item()
        writer.writerow([frame, w, i, f"{t:.6g}", ends[w], ends[w + 1], f"{value:.6g}"])
    write_text_atomic(path, buf.getvalue())
    return len(frames)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def curve_panel(energies: Tensor, ends: list[str], width: int, res: int) -> Image.Image:
    """A white panel `width` wide with one energy curve per walk, points under grid columns.

    `energies` is (walks, steps); the grid has `steps` columns of side `res` with torchvision's
    padding.
    """
    walks, steps = energies.shape
    pad = GRID_PADDING
    fs = int(np.clip(res // 3, 10, 28))
    font = _font(fs)
    line = max(1, res // 24)
    dot = max(2, res // 12)
    plot_h = max(4 * fs, int(0.9 * res))
    top, bottom = fs + 6, fs + 6
    panel = Image.new("RGB", (width, top + plot_h + bottom), "white")
    draw = ImageDraw.Draw(panel)
    values = energies.double().numpy()
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-9:  # a flat curve: centre it
        lo, hi = lo - 1.0, hi + 1.0
    y_of = lambda v: top + (hi - v) / (hi - lo) * (plot_h - 1)  # noqa: E731
    x_of = lambda i: pad + i * (res + pad) + (res - 1) / 2  # noqa: E731
    x0, x1 = x_of(0), x_of(steps - 1)
    for v in (lo, hi):
        draw.line([(x0, y_of(v)), (x1, y_of(v))], fill="#BBBBBB", width=1)
    draw.text((2, 2), f"energy max {hi:.4g}", fill="#444444", font=font)
    draw.text((2, top + plot_h + 3), f"min {lo:.4g}", fill="#444444", font=font)
    for w in range(walks):
        colour = COLOURS[w % len(COLOURS)]
        points = [(x_of(i), y_of(values[w, i])) for i in range(steps)]
        if steps > 1:
            draw.line(points, fill=colour, width=line)
        for x, y in points:
            draw.ellipse([x - dot, y - dot, x + dot, y + dot], fill=colour)
    # Legend, right-aligned in the header: as many walks as fit.
    x = width - 2
    for w in reversed(range(walks)):
        label = f"{ends[w]} to {ends[w + 1]}"
        tw = draw.textlength(label, font=font)
        box = fs // 2 + 2
        if x - tw - box - 6 < draw.textlength(f"energy max {hi:.4g}", font=font) + 10:
            break
        x -= tw
        draw.text((x, 2), label, fill="#222222", font=font)
        x -= box + 3
        draw.rectangle([x, 2 + fs // 4, x + box, 2 + fs // 4 + box], fill=COLOURS[w % len(COLOURS)])
        x -= 8
    return panel


def save_grid_with_curve(
    images: Tensor, energies: Tensor, ends: list[str], path: str | os.PathLike
) -> tuple[int, int]:
    """The walk grid (one row per walk) with its energy curve underneath, written atomically;
    returns the picture's (width, height)."""
    walks, steps = energies.shape
    res = images.shape[-1]
    grid = make_grid(
        images.float(), nrow=steps, padding=GRID_PADDING, normalize=True, value_range=(-1, 1)
    )
    grid = grid.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    top = Image.fromarray(grid)
    panel = curve_panel(energies, ends, top.width, res)
    picture = Image.new("RGB", (top.width, top.height + panel.height), "white")
    picture.paste(top, (0, 0))
    picture.paste(panel, (0, top.height))
    with atomic_write(path) as tmp:
        picture.save(tmp)
    return picture.size
