"""A correctly sealed record whose image header names a huge size is refused before decoding."""

from __future__ import annotations

import io

import lmdb
import pytest
from PIL import Image

from datasets_prep import make_source, write_dataset
from progressive.core.errors import UserError
from progressive.core.images import header_size
from progressive.data.format import image_key, read_meta, seal
from progressive.data.reader import ImageDataset


def _encoded(size, fmt, mode="RGB"):
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format=fmt)
    return buf.getvalue()


def test_header_size_of_png_and_jpeg():
    assert header_size(_encoded((20, 12), "PNG")) == (20, 12)
    assert header_size(_encoded((33, 7), "JPEG")) == (33, 7)
    assert header_size(b"not an image") is None


def test_a_sealed_decompression_bomb_is_refused_by_its_header(tmp_path):
    root = tmp_path / "ds"
    write_dataset(make_source("synthetic", "4"), root, 8, encoding="png", workers=0,
                  progress=False)
    meta = read_meta(root)
    key = image_key(8, 1)
    bomb = _encoded((20000, 20000), "PNG", mode="1")  # 50 KB that decode to 400 MB
    env = lmdb.open(str(root / meta["shards"][0]["path"]), subdir=True, lock=False)
    with env.begin(write=True) as txn:
        txn.put(key, seal(key, bomb))
    env.close()
    ds = ImageDataset(root, 8, check_shards=False)
    assert ds.batch([0]).shape == (1, 3, 8, 8)
    with pytest.raises(UserError, match="header says 20000x20000, expected 8x8"):
        ds.batch([1])
