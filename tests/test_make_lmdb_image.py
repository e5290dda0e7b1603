"""Pixel helpers of the dataset writer: colour conversion, crop/resize, pyramid, encoding, and
the synthetic renderer."""

import io

import numpy as np
import pytest
from PIL import Image

from progressive.core import images as im
from progressive.data.synthetic import render


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_box_down_is_exact_rounded_mean():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    y = im.box_down(x)
    for i in range(4):
        for j in range(4):
            block = x[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].astype(int)
            assert (y[i, j] == (block.sum(axis=(0, 1)) + 2) // 4).all()
    # 255s must not overflow
    assert (im.box_down(np.full((2, 2, 3), 255, np.uint8)) == 255).all()


def test_pyramid_levels():
    x = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    levels = im.pyramid(x)
    assert sorted(levels) == [4, 8, 16, 32]
    for r in (4, 8, 16):
        assert (levels[r] == im.box_down(levels[2 * r])).all()


@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_lossless_encodings_round_trip(encoding):
    x = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert (im.decode(im.encode(x, encoding), encoding, 16) == x).all()


def test_jpeg_encoding_is_close():
    x = np.kron(np.random.default_rng(3).integers(0, 256, (4, 4, 3)), np.ones((8, 8, 1)))
    x = x.astype(np.uint8)
    y = im.decode(im.encode(x, "jpeg", 95), "jpeg", 32)
    assert np.abs(y.astype(int) - x).mean() < 6


def test_modes_become_rgb():
    gray = Image.fromarray(np.full((8, 8), 100, np.uint8), "L")
    assert np.asarray(im.to_rgb(gray)).tolist() == np.full((8, 8, 3), 100).tolist()
    pal = gray.convert("P")
    assert im.to_rgb(pal).mode == "RGB"
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent -> white
    assert (np.asarray(im.to_rgb(rgba)) == 255).all()
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert abs(int(np.asarray(im.to_rgb(half))[0, 0, 0]) - 127) <= 1
    cmyk = Image.new("CMYK", (4, 4), (0, 0, 0, 0))
    assert (np.asarray(im.to_rgb(cmyk)) == 255).all()
    deep = Image.fromarray(np.full((4, 4), 65535, np.uint16))  # 16-bit grey: scaled, not clipped
    half16 = Image.fromarray(np.full((4, 4), 32896, np.uint16))
    assert (np.asarray(im.to_rgb(deep)) == 255).all()
    assert (np.asarray(im.to_rgb(half16)) == 128).all()


def test_sixteen_bit_png_decodes_to_rgb():
    data = _bytes(Image.fromarray(np.full((8, 8), 4000, np.uint16)), "PNG")
    rgb = im.to_rgb(im.open_image(data))
    assert rgb.mode == "RGB" and int(np.asarray(rgb)[0, 0, 0]) == round(4000 / 257)


def test_crop_resize_center_and_reject():
    x = np.zeros((40, 60, 3), np.uint8)
    x[:, 10:50] = 200  # the centred 40x40 square
    out = im.crop_resize(Image.fromarray(x), 40)
    assert out.shape == (40, 40, 3) and (out == 200).all()
    assert im.crop_resize(Image.fromarray(x), 8).shape == (8, 8, 3)
    with pytest.raises(im.Reject, match="smaller than 64x64 after crop: 60x40"):
        im.crop_resize(Image.fromarray(x), 64)


def test_open_image_rejects_bad_bytes():
    with pytest.raises(im.Reject):
        im.open_image(b"not an image")
    jpeg = _bytes(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    with pytest.raises(im.Reject):
        im.open_image(jpeg[: len(jpeg) // 2])


def test_synthetic_render_deterministic_and_varied():
    a, b = render(7, 64), render(7, 64)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert (a == b).all()
    assert not (render(8, 64) == a).all()
    # The same picture at every resolution: the 32x32 render is close to the box-reduced 256.
    big = im.pyramid(render(7, 256))[32].astype(int)
    assert np.abs(big - render(7, 32).astype(int)).mean() < 12
    # Shapes make big, clear structure at 32x32: strong contrast across the image.
    x = render(3, 32).astype(int)
    assert x.std() > 20


def test_pyramid_matches_box_down_on_extremes():
    rng = np.random.default_rng(3)
    for x in (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
              rng.choice(np.array([0, 1, 254, 255], np.uint8), (64, 64, 3))):
        levels, ref = im.pyramid(x), x
        for r in (32, 16, 8, 4):
            ref = im.box_down(ref)
            assert levels[r].shape == (r, r, 3) and (levels[r] == ref).all()
