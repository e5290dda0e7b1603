"""Image operations: file names, decoding, colour conversion, crop and resize, the box
pyramid, encoding, and the pixel ranges (uint8 on disk, float in [-1, 1] inside the networks).

The dataset writer runs these in its worker processes; the commands that read image files use
the same ones, so a photo is prepared exactly as a dataset image would be.
"""

from __future__ import annotations

import inspect
import io
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import ParamSpec

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

P = ParamSpec("P")

RESIZE_FILTER = "PIL.Image.LANCZOS"
ALPHA_POLICY = "composited over white"
PYRAMID = "2x2 box average of the level above, (a+b+c+d+2)//4 on uint8, before encoding"
JPEG_SUBSAMPLING = "4:4:4"
# zlib level 3: about half the time of the default 6, 1-5% larger files on photographs.
PNG_LEVEL = 3


EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class Reject(Exception):
    """An input that cannot become a dataset image; the message is the reason."""


def is_image_name(name: str) -> bool:
    """An image file by its extension, and not a hidden one (such as macOS `._` forks)."""
    base = name.rsplit("/", 1)[-1]  # zip members use "/"; folder entries are bare names
    return base.lower().endswith(EXTENSIONS) and not base.startswith(".")


def image_files(root: str | os.PathLike) -> list[str]:
    """Paths (relative to `root`, sorted) of every image file under the folder `root`."""
    names = []
    for folder, _, files in os.walk(root):  # faster than rglob: no stat per file
        rel = os.path.relpath(folder, root)
        names += [f if rel == "." else os.path.join(rel, f) for f in files if is_image_name(f)]
    return sorted(names)


def open_image(data: bytes | str, apply_exif: bool = True) -> Image.Image:
    """Decode fully (not lazily) so truncated files fail here, and treat Pillow's
    decompression-bomb warning as an error: a huge image would blow a worker's memory."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            src = io.BytesIO(data) if isinstance(data, bytes) else data
            img = Image.open(src)
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise Reject(f"decompression bomb: {e}") from None
        except Image.UnidentifiedImageError:
            raise Reject("not an image Pillow can decode") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise Reject(f"cannot decode: {e}") from None
    if apply_exif:
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # a broken EXIF block should not cost the image
            pass
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: 16/32-bit integer grey is scaled (not clipped) to 8 bits,
    palette/grey/CMYK are converted, transparency is composited over white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        a = np.asarray(img).astype(np.float64)
        # 16-bit data (the usual case) scales by 257; wider ranges by their maximum.
        top = 65535.0 if mode != "F" and a.max(initial=0) <= 65535 else max(a.max(initial=1), 1)
        if mode == "F" and a.max(initial=0) <= 1.0:
            top = 1.0
        g = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(g[..., None], 3, axis=2), "RGB")
    if mode == "P" and "transparency" in img.info or mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def crop_resize(img: Image.Image | np.ndarray, res: int) -> np.ndarray:
    """Center square crop, then resize to `res` with Lanczos; (res, res, 3) uint8.

    Never upsamples: an image whose square crop is smaller than `res` is rejected."""
    if isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise Reject(f"array of shape {img.shape} {img.dtype} is not HxWx3 uint8")
        if img.shape[0] == img.shape[1] == res:
            return np.ascontiguousarray(img)
        img = Image.fromarray(img, "RGB")
    img = to_rgb(img)
    w, h = img.size
    side = min(w, h)
    if side < res:
        raise Reject(f"smaller than {res}x{res} after crop: {w}x{h}")
    left, top = (w - side) // 2, (h - side) // 2
    box = (left, top, left + side, top + side)
    if side == res:
        out = img.crop(box) if (w, h) != (res, res) else img
    else:
        out = img.resize((res, res), Image.Resampling.LANCZOS, box=box)
    return np.asarray(out, dtype=np.uint8).copy()


def box_down(x: np.ndarray) -> np.ndarray:
    """2x2 box average with exact integer rounding: (a + b + c + d + 2) // 4."""
    a = x.astype(np.uint16)
    s = a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2] + 2
    return (s >> 2).astype(np.uint8)


def pyramid(x: np.ndarray, min_res: int = 4) -> dict[int, np.ndarray]:
    """{res: image} for every power of two from x's size down to `min_res`, each level the
    `box_down` of the one above (Pillow's 2x2 reduce rounds the same way, at half the cost)."""
    levels = {x.shape[0]: x}
    img = Image.fromarray(x, "RGB")
    while img.size[0] > min_res:
        img = img.reduce(2)
        levels[img.size[0]] = np.asarray(img)
    return levels


def encode(x: np.ndarray, encoding: str, jpeg_quality: int = 95) -> bytes:
    """Encode an (H, W, 3) uint8 image as raw HWC bytes, PNG or JPEG."""
    if encoding == "raw":
        return np.ascontiguousarray(x).tobytes()
    buf = io.BytesIO()
    img = Image.fromarray(x, "RGB")
    if encoding == "png":
        img.save(buf, format="PNG", compress_level=PNG_LEVEL)
    elif encoding == "jpeg":
        img.save(buf, format="JPEG", quality=jpeg_quality, subsampling=0)
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    return buf.getvalue()


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR or a JPEG's start-of-frame header, read before
    anything is decoded (a small file may decode to gigabytes); None when neither is found."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            return int.from_bytes(data[i + 7 : i + 9], "big"), height
        i += 2 + length
    return None


def decode(data: bytes, encoding: str, res: int) -> np.ndarray:
    """Inverse of `encode` (for tests and checks): (res, res, 3) uint8."""
    if encoding == "raw":
        return np.frombuffer(data, np.uint8).reshape(res, res, 3)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def load_image_file(path: str | os.PathLike, res: int, max_res: int) -> Tensor:
    """One image file prepared like a dataset image: centre crop and Lanczos resize to the
    largest power of two it reaches (at most `max_res`), then 2x2 box averages down to `res`.
    uint8 (3, res, res). Raises `Reject` for a file that cannot be used."""
    img = open_image(str(Path(path)))
    side = min(img.size)
    if side < res:
        raise Reject(f"{img.size[0]}x{img.size[1]} is smaller than {res}x{res}")
    target = res
    while target * 2 <= min(side, max_res):
        target *= 2
    x = crop_resize(img, target)
    while x.shape[0] > res:
        x = box_down(x)
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).contiguous()


def to_uint8(images: Tensor) -> Tensor:
    """uint8 images unchanged; float images in [-1, 1] mapped to [0, 255], rounded, clamped."""
    if images.dtype == torch.uint8:
        return images
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def to_float(images: Tensor) -> Tensor:
    """Float images in [-1, 1]: uint8 via x / 127.5 - 1, float images unchanged (as float32)."""
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1
    return images.float()


def all_at_once(batches: Callable[P, Iterable[Tensor]], name: str, doc: str) -> Callable[P, Tensor]:
    """The function `name` (documented by `doc`) that takes the arguments of `batches`, a
    function yielding image batches (B, 3, res, res) at its argument `res`, and returns them
    all in one tensor: (0, 3, res, res) when there are none."""
    signature = inspect.signature(batches)

    def whole(*args: P.args, **kwargs: P.kwargs) -> Tensor:
        out = list(batches(*args, **kwargs))
        if out:
            return torch.cat(out)
        res = signature.bind(*args, **kwargs).arguments["res"]
        return torch.zeros(0, 3, res, res)

    whole.__name__ = whole.__qualname__ = name
    whole.__module__, whole.__doc__ = batches.__module__, doc
    whole.__signature__ = signature.replace(return_annotation=Tensor)  # type: ignore[attr-defined]
    return whole
