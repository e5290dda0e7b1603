"""The LMDB reader, the resumable sampler and the DataLoader maker, on tiny hand-made datasets."""

from __future__ import annotations

import io
import json
from pathlib import Path

import lmdb
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from progressive.core.errors import UserError
from progressive.core.files import write_json_atomic
from progressive.core.resolutions import resolutions as all_resolutions
from progressive.data.format import (
    FORMAT,
    VERSION,
    image_key,
    seal,
    shard_name,
)
from progressive.data.reader import ImageDataset, InfiniteSampler, make_loader, verify_dataset

# torchvision 0.29 announces on every decode that its decoders are moving elsewhere
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def _encode(image: torch.Tensor, encoding: str) -> bytes:
    """Encode a uint8 CHW image as the format stores it."""
    hwc = image.permute(1, 2, 0).contiguous()
    if encoding == "raw":
        return hwc.numpy().tobytes()
    buf = io.BytesIO()
    fmt = "PNG" if encoding == "png" else "JPEG"
    Image.fromarray(hwc.numpy()).save(buf, format=fmt, quality=95)
    return buf.getvalue()


def write_dataset(
    root: Path, count: int = 10, max_res: int = 16, encoding: dict[int, str] | None = None,
    shard_counts: list[int] | None = None, seed: int = 0, extra_meta: dict | None = None,
    version: int = VERSION,
) -> dict[int, torch.Tensor]:
    """Write a dataset as DESIGN.md section 3 describes; return the images stored per resolution.
    Version 1 is the older format: no checksums, no shard sizes.

    Images are smooth random fields (so JPEG stays close); lower resolutions are 2x2 box averages.
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=g)
    top = F.interpolate(coarse, size=(max_res, max_res), mode="bilinear", align_corners=False)
    top = (top * 255).round().clamp(0, 255)
    resolutions = all_resolutions(max_res)
    images = {max_res: top.to(torch.uint8)}
    level = top
    for res in reversed(resolutions[:-1]):
        level = F.avg_pool2d(level, 2)
        images[res] = level.round().to(torch.uint8)
    encoding = encoding or {r: "raw" for r in resolutions}
    shard_counts = shard_counts or [count]
    assert sum(shard_counts) == count
    root.mkdir(parents=True, exist_ok=True)
    shards, first = [], 0
    for i, n in enumerate(shard_counts):
        env = lmdb.open(str(root / shard_name(i)), map_size=64 << 20)
        with env.begin(write=True) as txn:
            for index in range(first, first + n):
                for res in resolutions:
                    key = image_key(res, index)
                    value = _encode(images[res][index], encoding[res])
                    txn.put(key, seal(key, value) if version >= 2 else value)
        env.close()
        shards.append({"path": shard_name(i), "first": first, "count": n})
        if version >= 2:
            shards[-1]["bytes"] = (root / shard_name(i) / "data.mdb").stat().st_size
        first += n
    meta = {
        "format": FORMAT, "version": version, "count": count, "max_res": max_res,
        "resolutions": resolutions, "encoding": {str(r): e for r, e in encoding.items()},
        "channels": 3, "crop": "center", "resize": "lanczos, then 2x2 box average",
        "source": {"kind": "folder", "input": "/nowhere/images"}, "shards": shards,
        "created": "2024-01-01T00:00:00Z",
    }
    meta.update(extra_meta or {})
    write_json_atomic(root / "meta.json", meta)
    return images


# --- reading --------------------------------------------------------------------------------


def test_raw_and_png_round_trip_exactly(tmp_path):
    enc = {4: "raw", 8: "png", 16: "raw", 32: "png"}
    images = write_dataset(tmp_path / "d", count=5, max_res=32, encoding=enc)
    for res in enc:
        ds = ImageDataset(tmp_path / "d", res)
        assert len(ds) == 5 and ds.max_res == 32 and ds.meta["count"] == 5
        for i in range(5):
            got = ds[i]
            assert got.dtype == torch.uint8 and got.shape == (3, res, res)
            assert torch.equal(got, images[res][i]), (res, i)


def test_one_dataset_under_two_spellings_of_its_path(tmp_path):
    images = write_dataset(tmp_path / "d", count=3, max_res=8)
    (tmp_path / "other").mkdir()
    a = ImageDataset(tmp_path / "d", 8)
    b = ImageDataset(tmp_path / "other" / ".." / "d", 8)
    assert torch.equal(a[1], images[8][1]) and torch.equal(b[1], images[8][1])


def test_jpeg_decodes_close(tmp_path):
    enc = {4: "raw", 8: "jpeg", 16: "jpeg"}
    images = write_dataset(tmp_path / "d", count=3, max_res=16, encoding=enc)
    ds = ImageDataset(tmp_path / "d", 16)
    for i in range(3):
        got = ds[i]
        assert got.shape == (3, 16, 16) and got.dtype == torch.uint8
        err = (got.float() - images[16][i].float()).abs().mean().item()
        assert err < 6, err


def test_three_shards_map_indices(tmp_path):
    images = write_dataset(tmp_path / "d", count=10, max_res=8, shard_counts=[4, 1, 5])
    ds = ImageDataset(tmp_path / "d", 8)
    assert [s["count"] for s in ds.meta["shards"]] == [4, 1, 5]
    for i in range(10):
        assert torch.equal(ds[i], images[8][i]), i
    order = [9, 0, 4, 3, 5]  # a batch across all three shards, out of order
    assert torch.equal(ds[order], images[8][order])
    with pytest.raises(IndexError):
        ds[10]


def test_missing_resolution_is_one_line_error(tmp_path):
    write_dataset(tmp_path / "d", count=2, max_res=16)
    with pytest.raises(UserError) as e:
        ImageDataset(tmp_path / "d", 128)
    msg = str(e.value)
    assert "4..16" in msg and "--res 128" in msg and "\n" not in msg


def test_missing_meta(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a dataset"):
        ImageDataset(tmp_path / "empty", 4)
    with pytest.raises(UserError, match="does not exist"):
        ImageDataset(tmp_path / "nowhere", 4)


def test_shards_without_meta_says_rerun(tmp_path):
    write_dataset(tmp_path / "d", count=2, max_res=8)
    (tmp_path / "d" / "meta.json").unlink()
    with pytest.raises(UserError) as e:
        ImageDataset(tmp_path / "d", 8)
    assert "re-run" in str(e.value) and "\n" not in str(e.value)


def test_malformed_meta_and_unknown_version(tmp_path):
    write_dataset(tmp_path / "d", count=2, max_res=8)
    meta_path = tmp_path / "d" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        ImageDataset(tmp_path / "d", 8)
    meta_path.write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(UserError, match="version 99"):
        ImageDataset(tmp_path / "d", 8)
    meta_path.write_text(json.dumps({**meta, "shards": [{"path": "shard-00000.lmdb"}]}))
    with pytest.raises(UserError, match="malformed"):
        ImageDataset(tmp_path / "d", 8)


def test_older_format_damaged_values_name_shard_and_key(tmp_path):
    enc = {4: "raw", 8: "png"}
    write_dataset(tmp_path / "d", count=4, max_res=8, encoding=enc, shard_counts=[2, 2], version=1)
    good_png = _encode(torch.zeros(3, 8, 8, dtype=torch.uint8), "png")
    bad_png = bytearray(good_png)
    bad_png[-20] ^= 0xFF  # inside the image data: the chunk's CRC no longer matches
    env = lmdb.open(str(tmp_path / "d" / shard_name(1)))
    with env.begin(write=True) as txn:
        txn.put(image_key(8, 2), b"\x89PNG garbage")
        txn.put(image_key(8, 3), bytes(bad_png))
        txn.put(image_key(4, 2), b"short")
    env.close()
    for res, index, what in ((8, 2, "PNG chunk"), (8, 3, "PNG chunk"), (4, 2, "bytes")):
        with pytest.raises(UserError) as e:
            ImageDataset(tmp_path / "d", res)[index]
        msg = str(e.value)
        assert what in msg and "shard-00001.lmdb" in msg and f"{res}/{index:08d}" in msg
        assert "damaged" in msg and "--verify" in msg and "\n" not in msg
    problems = verify_dataset(tmp_path / "d", progress=False)["problems"]
    assert len(problems) == 3 and all("shard-00001.lmdb" in p for p in problems)


def _flip(root: Path, shard: int, value: bytes, offset: int = 0) -> None:
    """Flip one byte of `value` where it lies in the shard's data file, in place."""
    data = root / shard_name(shard) / "data.mdb"
    blob = bytearray(data.read_bytes())
    at = blob.find(value)
    assert at >= 0 and blob.find(value, at + 1) < 0
    blob[at + offset] ^= 0x01
    data.write_bytes(bytes(blob))


@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_flipped_byte_fails_its_checksum_before_decoding(tmp_path, encoding, monkeypatch):
    enc = {4: "raw", 8: encoding}
    write_dataset(tmp_path / "d", count=4, max_res=8, encoding=enc, shard_counts=[2, 2])
    ds = ImageDataset(tmp_path / "d", 8)
    stored = ds._read([3])[0]
    _flip(tmp_path / "d", 1, stored, offset=len(stored) // 2)
    import progressive.data.reader as data

    decoded, real_decode = [], data.decode_png
    monkeypatch.setattr(data, "decode_png", lambda b: decoded.append(1) or real_decode(b))
    ds = ImageDataset(tmp_path / "d", 8)
    assert ds.batch([0, 1, 2]).shape == (3, 3, 8, 8)
    decoded.clear()
    with pytest.raises(UserError) as e:
        ds.batch([2, 3])
    msg = str(e.value)
    assert "checksum" in msg and "shard-00001.lmdb, key 8/00000003" in msg and "\n" not in msg
    assert decoded == []  # every record of a batch is verified before any is decoded
    monkeypatch.undo()
    result = verify_dataset(tmp_path / "d", progress=False)
    assert result["records"] == 8 and len(result["problems"]) == 1
    assert "8/00000003" in result["problems"][0]


def test_swapped_records_fail_their_checksums(tmp_path):
    write_dataset(tmp_path / "d", count=2, max_res=4)
    env = lmdb.open(str(tmp_path / "d" / shard_name(0)))
    with env.begin() as txn:
        a, b = txn.get(image_key(4, 0)), txn.get(image_key(4, 1))
    env.close()
    blob = bytearray((tmp_path / "d" / shard_name(0) / "data.mdb").read_bytes())
    ia, ib = blob.find(a), blob.find(b)
    blob[ia : ia + len(a)], blob[ib : ib + len(b)] = b, a  # same size, same file length
    (tmp_path / "d" / shard_name(0) / "data.mdb").write_bytes(bytes(blob))
    with pytest.raises(UserError, match="key 4/00000000 is damaged .checksum"):
        ImageDataset(tmp_path / "d", 4)[0]


@pytest.mark.parametrize("version", [1, 2])
def test_short_or_missing_shards_are_refused_before_mapping(tmp_path, version):
    write_dataset(tmp_path / "d", count=6, max_res=8, shard_counts=[3, 3], version=version)
    data = tmp_path / "d" / shard_name(1) / "data.mdb"
    size = data.stat().st_size
    os_truncate = __import__("os").truncate
    os_truncate(data, size // 2)
    with pytest.raises(UserError) as e:
        ImageDataset(tmp_path / "d", 8)
    msg = str(e.value)
    assert "shard-00001.lmdb" in msg and "cut short" in msg and "\n" not in msg
    problems = verify_dataset(tmp_path / "d", progress=False)
    assert problems["records"] == 6 and len(problems["problems"]) == 1  # shard 0 still read
    import shutil

    shutil.rmtree(tmp_path / "d" / shard_name(1))
    with pytest.raises(UserError, match="shard-00001.lmdb is missing"):
        ImageDataset(tmp_path / "d", 4)


@pytest.mark.parametrize("version", [1, 2])
def test_count_beyond_the_records_is_refused(tmp_path, version):
    write_dataset(tmp_path / "d", count=4, max_res=4, version=version)
    meta_path = tmp_path / "d" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["count"] = 6
    meta["shards"][0]["count"] = 6
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="holds 4 records but meta.json promises 6"):
        ImageDataset(tmp_path / "d", 4)


def test_older_format_still_reads(tmp_path):
    images = write_dataset(tmp_path / "d", count=3, max_res=8, version=1,
                           encoding={4: "raw", 8: "png"})
    for res in (4, 8):
        ds = ImageDataset(tmp_path / "d", res)
        assert torch.equal(ds.batch([0, 1, 2]), images[res])
    assert verify_dataset(tmp_path / "d", progress=False) == {"records": 6, "problems": []}


def test_pickles_after_reading(tmp_path):
    import pickle

    images = write_dataset(tmp_path / "d", count=3, max_res=4)
    ds = ImageDataset(tmp_path / "d", 4)
    ds[0]  # opens a shard
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[2], images[4][2])


# --- sampler --------------------------------------------------------------------------------


def _take(sampler: InfiniteSampler, n: int) -> list[int]:
    it = iter(sampler)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("size,world", [(10, 1), (10, 3), (11, 4), (7, 7)])
def test_sampler_splits_each_epoch_across_ranks(size, world):
    per = size // world
    ranks = [_take(InfiniteSampler(size, r, world, seed=5), 3 * per) for r in range(world)]
    epochs = []
    for e in range(3):
        parts = [set(r[e * per : (e + 1) * per]) for r in ranks]
        assert all(len(p) == per for p in parts)  # same length, no repeats within a rank
        union = set().union(*parts)
        assert len(union) == per * world  # disjoint across ranks, covers (size//W)*W indices
        assert union <= set(range(size))
        epochs.append([x for r in ranks for x in r[e * per : (e + 1) * per]])
    if size >= 10:
        assert epochs[0] != epochs[1] != epochs[2]  # a new permutation every epoch


def test_sampler_is_deterministic_per_seed():
    assert _take(InfiniteSampler(50, seed=1), 120) == _take(InfiniteSampler(50, seed=1), 120)
    assert _take(InfiniteSampler(50, seed=1), 50) != _take(InfiniteSampler(50, seed=2), 50)
    assert _take(InfiniteSampler(50, shuffle=False), 60) == list(range(50)) + list(range(10))


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_sampler_resumes_exactly(world):
    size = 13
    for rank in range(world):
        full = _take(InfiniteSampler(size, rank, world, seed=7), 40)
        per = size // world
        for k in (0, 1, per - 1, per, per + 1, 2 * per + 3, 25):
            s = InfiniteSampler(size, rank, world, seed=7, start=k)
            assert _take(s, 40 - k) == full[k:], (world, rank, k)
            assert s.position == 40


def test_sampler_refuses_too_small_dataset():
    with pytest.raises(UserError, match="fewer than"):
        InfiniteSampler(3, rank=0, world_size=4)


# --- loader ---------------------------------------------------------------------------------


@pytest.mark.parametrize("res", [4, 8])
def test_loader_same_batches_with_0_and_2_workers(tmp_path, res):
    enc = {4: "raw", 8: "png"}
    write_dataset(tmp_path / "d", count=12, max_res=8, encoding=enc, shard_counts=[5, 7])
    ds = ImageDataset(tmp_path / "d", res)
    ds[0]  # an open shard in the parent must not leak into forked workers

    def batches(workers: int, start: int) -> list[torch.Tensor]:
        loader = make_loader(ds, 4, rank=1, world_size=2, seed=3, start=start, workers=workers)
        it = iter(loader)
        return [next(it) for _ in range(5)]

    b0, b2 = batches(0, 2), batches(2, 2)
    assert all(b.shape == (4, 3, res, res) and b.dtype == torch.uint8 for b in b0)
    assert all(torch.equal(x, y) for x, y in zip(b0, b2, strict=True))
    # the batches are the sampler's images, in its order
    order = _take(InfiniteSampler(12, 1, 2, seed=3, start=2), 20)
    expected = torch.stack([ds[i] for i in order])
    assert torch.equal(torch.cat(b0), expected)
