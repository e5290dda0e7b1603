"""Every source of the dataset writer, on tiny fixtures built here."""

import io
import json
import pickle
import tarfile
import zipfile

import lmdb
import numpy as np
import pytest
from PIL import Image

from datasets_prep import make_source, write_dataset
from datasets_prep.celeba import celeba_split
from datasets_prep.readback import iter_images
from progressive.core import images as im
from progressive.core.errors import UserError
from progressive.data import pool
from progressive.data.format import read_meta
from progressive.data.synthetic import render


def _img(seed: int, w: int, h: int) -> np.ndarray:
    """A smooth image (so JPEG keeps it close) with a colour set by `seed`."""
    yy, xx = np.mgrid[0:h, 0:w]
    c = np.random.default_rng(seed).integers(20, 236, 3)
    return np.clip(c + 0.3 * xx[..., None] - 0.2 * yy[..., None], 0, 255).astype(np.uint8)


def _save(path, arr, fmt=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt, **kw)


def _bytes(arr, fmt, **kw):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _read(root):
    out = {}
    for index, res, x in iter_images(root):
        out.setdefault(index, {})[res] = x
    return out


def _expected(arr, res):
    return im.pyramid(im.crop_resize(Image.fromarray(arr), res))


def test_folder_recursive_sorted_exact_raw(tmp_path):
    arrays = {"b/x.png": _img(1, 20, 16), "a.png": _img(2, 16, 16), "b/a/z.bmp": _img(3, 24, 18)}
    for name, arr in arrays.items():
        _save(tmp_path / "in" / name, arr)
    (tmp_path / "in" / "notes.txt").write_text("ignored")
    (tmp_path / "in" / "b" / "._x.png").write_bytes(b"macOS metadata, not an image")
    meta = write_dataset(make_source("folder", str(tmp_path / "in")), tmp_path / "out", 16,
                         workers=0, progress=False)
    assert meta["count"] == read_meta(tmp_path / "out")["count"] == 3 and meta["rejected"] == 0
    got = _read(tmp_path / "out")
    for index, name in enumerate(sorted(arrays)):  # a.png, b/a/z.bmp, b/x.png
        want = _expected(arrays[name], 16)
        for r in (4, 8, 16):
            assert (got[index][r] == want[r]).all(), (name, r)
            if r < 16:  # each level is the box average of the one above
                assert (got[index][r] == im.box_down(got[index][2 * r])).all()


def test_png_encoding_exact_and_meta(tmp_path):
    _save(tmp_path / "in" / "a.png", _img(4, 30, 20))
    meta = write_dataset(make_source("folder", str(tmp_path / "in")), tmp_path / "out", 16,
                         encoding="png", workers=0, progress=False)
    read = read_meta(tmp_path / "out")
    assert read["encoding"] == {4: "png", 8: "png", 16: "png"}
    assert meta["preprocess"]["resize"].startswith("PIL.Image.LANCZOS")
    assert meta["channels"] == 3 and meta["split"] is None and meta["rejected"] == 0
    want = _expected(_img(4, 30, 20), 16)
    for _, res, x in iter_images(tmp_path / "out"):
        assert (x == want[res]).all()


def test_auto_encoding_raw_then_png():
    from progressive.data.writer import encodings_for

    assert encodings_for(512, "auto") == {4: "raw", 8: "raw", 16: "raw", 32: "raw", 64: "raw",
                                          128: "raw", 256: "raw", 512: "png"}
    assert set(encodings_for(8, "jpeg").values()) == {"jpeg"}


def test_zip_source(tmp_path):
    with zipfile.ZipFile(tmp_path / "in.zip", "w") as z:
        z.writestr("d/2.png", _bytes(_img(5, 8, 8), "PNG"))
        z.writestr("1.webp", _bytes(_img(6, 8, 8), "WEBP", lossless=True))
        z.writestr("readme.md", "x")
        z.writestr("__MACOSX/d/._2.png", b"macOS metadata, not an image")
    meta = write_dataset(make_source("zip", str(tmp_path / "in.zip")), tmp_path / "out", 8,
                         workers=0, progress=False)
    assert meta["rejected"] == 0
    got = _read(tmp_path / "out")
    assert len(got) == 2
    assert (got[0][8] == _img(6, 8, 8)).all() and (got[1][8] == _img(5, 8, 8)).all()


def test_celebahq_numeric_order_folder_and_zip(tmp_path):
    names = ["imgHQ00010.png", "imgHQ00002.png", "imgHQ00001.png", "imgHQ00100.png"]
    with zipfile.ZipFile(tmp_path / "hq.zip", "w") as z:
        for i, n in enumerate(names):
            _save(tmp_path / "hq" / n, _img(i, 8, 8))
            z.writestr(n, _bytes(_img(i, 8, 8), "PNG"))
    for inp in ("hq", "hq.zip"):
        out = tmp_path / f"out-{inp}"
        write_dataset(make_source("celebahq", str(tmp_path / inp)), out, 8, workers=0,
                      progress=False)
        got = _read(out)
        # numeric order 1, 2, 10, 100 -> fixture seeds 2, 1, 0, 3 (a string sort gives 1,10,100,2)
        for index, seed in enumerate([2, 1, 0, 3]):
            assert (got[index][8] == _img(seed, 8, 8)).all()


def test_lsun_webp_and_jpeg_values(tmp_path):
    src = tmp_path / "bedroom_train_lmdb"
    env = lmdb.open(str(src), map_size=1 << 24)
    arrays = {b"0a1f": _img(1, 24, 16), b"00ff": _img(2, 16, 20), b"1b2c": _img(3, 20, 20)}
    with env.begin(write=True) as txn:
        txn.put(b"0a1f", _bytes(arrays[b"0a1f"], "WEBP", lossless=True))
        txn.put(b"00ff", _bytes(arrays[b"00ff"], "JPEG", quality=100))
        txn.put(b"1b2c", b"garbage")
    env.close()
    meta = write_dataset(make_source("lsun", str(src)), tmp_path / "out", 16, workers=2,
                         progress=False)
    assert meta["count"] == 2 and meta["rejected"] == 1
    rejected = [json.loads(s) for s in (tmp_path / "out" / "rejected.jsonl").read_text().split("\n")
                if s]
    assert rejected[0]["path"] == "1b2c"
    got = _read(tmp_path / "out")
    # key order: 00ff (jpeg), 0a1f (webp, lossless: exact)
    assert (got[1][16] == _expected(arrays[b"0a1f"], 16)[16]).all()
    assert np.abs(got[0][16].astype(int) - _expected(arrays[b"00ff"], 16)[16]).mean() < 3


def _cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"fake",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"{i}.png".encode() for i in range(n)],
    }


def test_cifar10_tarball_and_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "MAX_BATCH", 4)  # labels must follow images across workers
    batches = {f"data_batch_{i}": _cifar_batch(3, i) for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(2, 9)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tf:
        for name, d in batches.items():
            data = pickle.dumps(d)
            (folder / name).write_bytes(data)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    for inp, split in (("cifar-10-python.tar.gz", "train"), ("cifar-10-batches-py", "test")):
        out = tmp_path / f"out-{split}"
        meta = write_dataset(make_source("cifar10", str(tmp_path / inp), split=split), out, 32,
                             workers=2 if split == "train" else 0, progress=False)
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        rows = np.concatenate([batches[n][b"data"] for n in names])
        labels = sum((batches[n][b"labels"] for n in names), [])
        assert meta["count"] == len(rows)
        got = _read(out)
        for i, row in enumerate(rows):
            assert (got[i][32] == row.reshape(3, 32, 32).transpose(1, 2, 0)).all()
        assert json.loads((out / "labels.json").read_text()) == labels
    with pytest.raises(UserError, match="--max-res 32"):
        write_dataset(make_source("cifar10", str(folder)), tmp_path / "o64", 64, progress=False)


def test_cifar10_refuses_foreign_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(UserError, match="refusing to load builtins.print"):
        write_dataset(make_source("cifar10", str(folder)), tmp_path / "out", 32, workers=0,
                      progress=False)


def test_imagenet32_npz_batches(tmp_path):
    rng = np.random.default_rng(0)
    data = {n: rng.integers(0, 256, (k, 3072), dtype=np.uint8)
            for n, k in (("train_data_batch_1", 3), ("train_data_batch_2", 2), ("val_data", 2))}
    labels = {n: rng.integers(1, 1001, len(d)) for n, d in data.items()}
    for n in data:  # the real batches are compressed npz, some named without the extension
        np.savez_compressed(tmp_path / f"{n}.npz", data=data[n], labels=labels[n])
    (tmp_path / "train_data_batch_2.npz").rename(tmp_path / "train_data_batch_2")
    for split, names in (("train", ["train_data_batch_1", "train_data_batch_2"]),
                         ("test", ["val_data"])):
        out = tmp_path / f"out-{split}"
        write_dataset(make_source("imagenet32", str(tmp_path), split=split), out, 32,
                      workers=0, progress=False)
        rows = np.concatenate([data[n] for n in names])
        got = _read(out)
        assert len(got) == len(rows)
        for i, row in enumerate(rows):
            assert (got[i][32] == row.reshape(3, 32, 32).transpose(1, 2, 0)).all()
        want = np.concatenate([labels[n] for n in names]).tolist()
        assert json.loads((out / "labels.json").read_text()) == want


def test_celeba_crop_and_split(tmp_path):
    folder = tmp_path / "img_align_celeba"
    for i in range(1, 11):
        _save(folder / f"{i:06d}.jpg", _img(i, 178, 218), quality=95)
    train, test = celeba_split([f"{i:06d}.jpg" for i in range(1, 11)], seed=0, sizes=(7, 2))
    assert len(train) == 7 and len(test) == 2 and not set(train) & set(test)
    assert (train, test) == celeba_split([f"{i:06d}.jpg" for i in range(10, 0, -1)], 0, (7, 2))
    assert celeba_split([f"{i:06d}.jpg" for i in range(1, 11)], seed=1, sizes=(7, 2)) != (
        train, test)
    for split, names in (("train", train), ("test", test)):
        out = tmp_path / split
        meta = write_dataset(
            make_source("celeba", str(folder), split=split, seed=0, split_sizes=(7, 2)), out, 32,
            workers=0, progress=False)
        assert meta["count"] == len(names)
        s = read_meta(out)["split"]
        assert s["name"] == split and s["seed"] == 0 and s["count"] == len(names)
        assert "permutation" in s["method"]
        got = _read(out)
        for index, name in enumerate(names):  # the face box of the 178x218 image
            src = np.asarray(Image.open(folder / name).convert("RGB"))[57:185, 25:153]
            assert (got[index][32] == _expected(src, 32)[32]).all()
    with pytest.raises(UserError, match="needs 10000 images"):
        make_source("celeba", str(folder), split="train")


def test_synthetic_source(tmp_path):
    meta = write_dataset(make_source("synthetic", "5"), tmp_path / "out", 32, workers=2,
                         progress=False)
    assert meta["count"] == 5 and meta["source"]["kind"] == "synthetic"
    got = _read(tmp_path / "out")
    for i in range(5):
        assert (got[i][32] == render(i, 32)).all()
        assert (got[i][4] == im.pyramid(render(i, 32))[4]).all()
    with pytest.raises(UserError, match="image count"):
        make_source("synthetic", "many")


def test_synthetic_test_split_is_disjoint_from_training_images(tmp_path):
    from progressive.data.synthetic import TEST_FIRST

    meta = write_dataset(make_source("synthetic", "3", split="test"), tmp_path / "held", 16,
                         workers=0, progress=False)
    assert meta["count"] == 3
    got = _read(tmp_path / "held")
    for i in range(3):
        assert (got[i][16] == render(TEST_FIRST + i, 16)).all()
        assert not (got[i][16] == render(i, 16)).all()
