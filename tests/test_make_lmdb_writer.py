"""The dataset writer: bad input, --strict, interrupted runs, output directory rules,
sharding, parallel workers, and the command line."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from datasets_prep import make_source, write_dataset
from datasets_prep.readback import iter_images, shard_keys
from progressive.core.errors import UserError
from progressive.data import pool, shards, writer
from progressive.data.format import image_key, read_meta, unseal

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "make_lmdb.py"


def _good(path: Path, seed: int, size=(20, 20), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)


def _messy(folder: Path) -> dict[str, str]:
    """Good images in every odd mode plus every kind of bad file; returns the bad ones with a
    word expected in their reason."""
    _good(folder / "00_rgb.png", 0)
    _good(folder / "01_gray.png", 1, mode="L")
    _good(folder / "02_palette.png", 2, mode="P")
    _good(folder / "03_rgba.png", 3, mode="RGBA")
    _good(folder / "04_cmyk.jpg", 4, mode="CMYK")
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(folder / "05_sixteen.png")
    (folder / "10_empty.jpg").write_bytes(b"")
    _good(folder / "full.jpg", 5)
    data = (folder / "full.jpg").read_bytes()
    (folder / "11_truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "full.jpg").unlink()
    (folder / "12_text.jpg").write_text("this is not a picture")
    _good(folder / "13_small.png", 6, size=(12, 30))
    _good(folder / "14_bomb.png", 7, size=(64, 64))  # over twice the limit: Pillow's error
    _good(folder / "15_bomb.png", 9, size=(36, 36))  # over the limit: Pillow only warns
    _good(folder / "99_rgb.png", 8)
    return {"10_empty.jpg": "empty", "11_truncated.jpg": "decode", "12_text.jpg": "not an image",
            "13_small.png": "smaller than 16x16 after crop: 12x30", "14_bomb.png": "bomb",
            "15_bomb.png": "bomb"}


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_inputs_are_rejected_and_odd_modes_accepted(tmp_path, monkeypatch, workers):
    bad = _messy(tmp_path / "in")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30 * 30)  # 64x64 is now over the limit
    meta = write_dataset(make_source("folder", str(tmp_path / "in")), tmp_path / "out", 16,
                         workers=workers, progress=False)
    assert meta["count"] == 7 and meta["rejected"] == len(bad)
    lines = (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()
    reasons = {d["path"]: d["reason"] for d in map(json.loads, lines)}
    assert set(reasons) == set(bad)
    for name, word in bad.items():
        assert word in reasons[name], (name, reasons[name])
    # Accepted images keep contiguous indices in source order; every one is RGB.
    images = list(iter_images(tmp_path / "out"))
    assert sorted({i for i, _, _ in images}) == list(range(7))
    assert all(x.shape == (r, r, 3) for _, r, x in images)
    sixteen = [x for i, r, x in images if i == 5 and r == 16][0]
    assert (sixteen == round(40000 / 257)).all()  # scaled to 8 bits, not clipped at 255


def test_strict_stops_at_first_bad(tmp_path):
    _messy(tmp_path / "in")
    with pytest.raises(UserError, match="10_empty.jpg: empty file"):
        write_dataset(make_source("folder", str(tmp_path / "in")), tmp_path / "out", 16,
                      workers=0, strict=True, progress=False)
    assert not (tmp_path / "out" / "meta.json").exists()


class _Boom(Exception):
    pass


@pytest.mark.parametrize("workers", [0, 2])
def test_interrupted_run_leaves_no_meta_and_is_reused(tmp_path, monkeypatch, workers):
    src = make_source("synthetic", "40")
    calls = {"n": 0}
    real_put = shards.ShardStore.put

    def flaky_put(self, first, images):
        real_put(self, first, images)
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Boom("killed")

    monkeypatch.setattr(pool, "MAX_BATCH", 4)
    monkeypatch.setattr(shards.ShardStore, "put", flaky_put)
    with pytest.raises(_Boom if workers == 0 else UserError, match="killed"):
        write_dataset(src, tmp_path / "out", 8, shard_size=6, workers=workers, progress=False)
    out = tmp_path / "out"
    assert not (out / "meta.json").exists() and any(out.glob("shard-*.lmdb"))
    with pytest.raises(UserError, match="did not finish.*re-run"):
        read_meta(out)
    monkeypatch.setattr(shards.ShardStore, "put", real_put)
    # The leftovers are cleaned and the directory reused without --overwrite.
    meta = write_dataset(src, out, 8, shard_size=6, workers=workers, progress=False)
    assert read_meta(out)["count"] == meta["count"] == 40
    assert len(list(iter_images(out))) == 40 * 2


@pytest.mark.parametrize("workers", [1, 2])
def test_killed_process_leaves_no_meta_and_no_workers(tmp_path, workers):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, str(TOOL), "synthetic", "100000", str(out), "--max-res", "8",
         "--workers", str(workers), "--shard-size", "100"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):  # wait until a few shards exist
            if len(list(out.glob("shard-*.lmdb"))) >= 2 or proc.poll() is not None:
                break
            subprocess.run(["sleep", "0.05"])
        children = _children(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert len(list(out.glob("shard-*.lmdb"))) >= 2
    assert not (out / "meta.json").exists()
    with pytest.raises(UserError, match="re-run"):
        read_meta(out)
    assert len(children) == (workers if workers > 1 else 0)
    for _ in range(100):  # each worker notices its parent is gone within about a second
        alive = [p for p in children if _running(p)]
        if not alive:
            break
        subprocess.run(["sleep", "0.1"])
    assert not alive


def test_existing_dataset_needs_overwrite_and_foreign_dirs_are_refused(tmp_path):
    out = tmp_path / "out"
    write_dataset(make_source("synthetic", "3"), out, 8, workers=0, progress=False)
    with pytest.raises(UserError, match="already holds a dataset.*--overwrite"):
        write_dataset(make_source("synthetic", "5"), out, 8, workers=0, progress=False)
    assert read_meta(out)["count"] == 3
    meta = write_dataset(make_source("synthetic", "5"), out, 8, shard_size=2, workers=0,
                         overwrite=True, progress=False)
    assert meta["count"] == 5 and len(list(out.glob("shard-*.lmdb"))) == 3
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="not empty"):
            write_dataset(make_source("synthetic", "3"), foreign, 8, workers=0,
                          overwrite=overwrite, progress=False)
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_sharding_by_size_and_count(tmp_path):
    for kwargs, counts in (({"shard_size": 4}, [4, 4, 2]), ({"shards": 3}, [4, 4, 2]),
                           ({"shards": 2}, [5, 5]), ({"shard_size": 20}, [10])):
        out = tmp_path / str(sorted(kwargs.items()))
        write_dataset(make_source("synthetic", "10"), out, 8, workers=0, progress=False,
                      **kwargs)
        meta = read_meta(out)
        assert [s["count"] for s in meta["shards"]] == counts
        keys = shard_keys(out)
        for s in meta["shards"]:
            want = {image_key(r, i) for r in (4, 8) for i in range(s["first"],
                                                                 s["first"] + s["count"])}
            assert keys[s["path"]] == want


@pytest.mark.parametrize("batch", [128, 3])
def test_parallel_matches_in_process_with_rejects_and_max_images(tmp_path, monkeypatch, batch):
    from progressive.core.images import Reject
    from progressive.data.synthetic import SyntheticSource, render

    class Holey(SyntheticSource):
        def load(self, item):
            if item % 5 == 2:
                raise Reject("a hole")
            return super().load(item)

    # With 3 images per batch, batches finish out of order across the two workers, rejects
    # fall in most of them, and --max-images cuts one in the middle with later ones in flight.
    monkeypatch.setattr(pool, "MAX_BATCH", batch)
    for w in (0, 2):
        meta = write_dataset(Holey("60"), tmp_path / f"w{w}", 16, workers=w, shard_size=7,
                             max_images=40, progress=False)
        assert meta["count"] == 40 and meta["rejected"] == 10
    a = list(iter_images(tmp_path / "w0"))
    b = list(iter_images(tmp_path / "w2"))
    assert len(a) == 40 * 3 and len(a) == len(b)
    for (i, r, x), (j, s, y) in zip(a, b, strict=True):
        assert i == j and r == s and (x == y).all()
    kept = [k for k in range(60) if k % 5 != 2][:40]  # source items behind indices 0..39
    at16 = {i: x for i, r, x in b if r == 16}
    assert all((at16[i] == render(k, 16)).all() for i, k in enumerate(kept))
    for w in (0, 2):  # only the rejects before the cut, in source order
        lines = (tmp_path / f"w{w}" / "rejected.jsonl").read_text().splitlines()
        assert [json.loads(x)["path"] for x in lines] == [str(k) for k in range(2, 49, 5)]


@pytest.mark.parametrize("workers", [0, 2])
def test_map_grows_when_full(tmp_path, monkeypatch, workers):
    # Far too small for 20 64x64 images; with two workers both grow the same shard's map.
    monkeypatch.setattr(writer, "initial_map_size", lambda max_res, shard_size: 64 << 10)
    monkeypatch.setattr(pool, "MAX_BATCH", 2)
    meta = write_dataset(make_source("synthetic", "20"), tmp_path / "out", 64, workers=workers,
                         progress=False)
    assert meta["count"] == 20
    images = list(iter_images(tmp_path / "out"))
    assert sorted({i for i, _, _ in images}) == list(range(20)) and len(images) == 20 * 5
    want = list(iter_images(_reference(tmp_path, 20, 64)))
    assert all(i == j and (x == y).all() for (i, _, x), (j, _, y) in zip(images, want,
                                                                        strict=True))


def _reference(tmp_path: Path, n: int, res: int) -> Path:
    out = tmp_path / f"reference-{n}-{res}"
    write_dataset(make_source("synthetic", str(n)), out, res, workers=0, progress=False)
    return out


def test_cli_summary_and_one_line_errors(tmp_path):
    spec = importlib.util.spec_from_file_location("make_lmdb", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    main = module.main
    runner = CliRunner()
    res = runner.invoke(main, ["synthetic", "4", str(tmp_path / "o"), "--max-res", "8",
                               "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert "wrote 4 images, rejected 0" in res.output and "images/s" in res.output
    for args, msg in (
        (["folder", str(tmp_path / "missing"), str(tmp_path / "o2"), "--max-res", "8"],
         "is not a folder"),
        (["synthetic", "4", str(tmp_path / "o"), "--max-res", "8"], "already holds a dataset"),
        (["folder", str(tmp_path), str(tmp_path / "o4"), "--max-res", "8", "--split", "train"],
         "--split applies"),
    ):
        res = runner.invoke(main, args)
        assert res.exit_code == 1 and res.output.startswith("Error: "), res.output
        assert msg in res.output and len(res.output.strip().splitlines()) == 1


def test_cli_subprocess_error_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(TOOL), "lsun", str(tmp_path / "nope"), str(tmp_path / "o"),
         "--max-res", "8"], capture_output=True, text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("Error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_crashed_worker_is_a_one_line_error(tmp_path, monkeypatch):
    from progressive.data.synthetic import SyntheticSource

    class Crashing(SyntheticSource):
        def load(self, item):
            if item == 3:
                os._exit(1)  # what a decoder segfault looks like from the parent
            return super().load(item)

    with pytest.raises(UserError, match="died.*--workers 0"):
        write_dataset(Crashing("40"), tmp_path / "out", 8, workers=2, progress=False)
    assert not (tmp_path / "out" / "meta.json").exists()


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("workers", [0, 2])
def test_write_failure_is_a_one_line_error(tmp_path, monkeypatch, workers):
    import lmdb

    def full(self, first, images):
        raise lmdb.Error("mdb_put: No space left on device")

    monkeypatch.setattr(shards.ShardStore, "put", full)
    with pytest.raises(UserError, match=r"writing .*out: Error: .*No space left on device"):
        write_dataset(make_source("synthetic", "10"), tmp_path / "out", 8, workers=workers,
                      progress=False)
    assert not (tmp_path / "out" / "meta.json").exists()


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _rss_file_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssFile in /proc/self/status")


def test_shard_writer_memory_stays_flat(tmp_path, monkeypatch):
    # LMDB reads every leaf page it copies on write through its map, where it stays resident;
    # mixing small inline values and large ones makes that about a third of the data.
    monkeypatch.setattr(shards, "REOPEN_BYTES", 4 << 20)
    store = shards.ShardStore(tmp_path, 100000, 1 << 32)
    rng = np.random.default_rng(0)
    image = {r: rng.bytes(3 * r * r) for r in (4, 8, 16, 32, 64, 128)}  # 87 KB
    before = _rss_file_mib()
    for batch in range(60):  # 1,920 images, 160 MiB
        store.put(batch * 32, [image] * 32)
    grown = _rss_file_mib() - before
    store.close()
    assert grown < 24, f"{grown:.0f} MiB of the shard stayed mapped"
    env = lmdb.open(str(tmp_path / "shard-00000.lmdb"), readonly=True, lock=False)
    with env.begin() as txn:
        assert txn.stat()["entries"] == 1920 * 6
        assert unseal(image_key(64, 1919), txn.get(image_key(64, 1919))) == image[64]
    env.close()


def test_shards_are_flushed_while_the_last_batches_convert(tmp_path, monkeypatch):
    # Once the last batch is handed out, the parent flushes the shards written so far; the
    # sync before meta.json follows and finds the data already on its way to disk.
    monkeypatch.setattr(pool, "MAX_BATCH", 2)
    events = []
    monkeypatch.setattr(shards, "fsync_path", lambda path: events.append(("flush", str(path))))
    real_sync = writer.sync_shards
    monkeypatch.setattr(writer, "sync_shards", lambda *a: (events.append(("sync",)),
                                                          real_sync(*a))[1])
    meta = write_dataset(make_source("synthetic", "30"), tmp_path / "out", 8, workers=2,
                         shard_size=10, progress=False)
    assert meta["count"] == 30
    flushed = [e[1] for e in events if e[0] == "flush"]
    # 15 batches of 2 for two workers holding 3 each: the first two shards exist by then.
    assert flushed[:2] == [str(tmp_path / "out" / f"shard-0000{k}.lmdb" / "data.mdb")
                           for k in (0, 1)]
    assert events[-1] == ("sync",)


def test_shard_opened_while_another_process_grows_its_map(tmp_path, monkeypatch):
    from progressive.data.shards import ShardStore

    real_open, sizes = lmdb.open, []

    def racing_open(path, map_size, **kw):
        sizes.append(map_size)
        if len(sizes) == 1:  # another worker grew the map between our open and its first read
            raise lmdb.MapResizedError("mdb_txn_begin: MDB_MAP_RESIZED")
        return real_open(path, map_size=map_size, **kw)

    monkeypatch.setattr(lmdb, "open", racing_open)
    store = ShardStore(tmp_path, shard_size=10, map_size=64 << 10)
    store.put(0, [{4: bytes(48)}])
    store.close()
    assert sizes == [64 << 10, 128 << 10]


def test_a_second_run_on_the_same_output_is_refused_while_the_first_writes(tmp_path):
    out = tmp_path / "ds"
    held = writer.lock_output(out)  # a first run, still writing
    try:
        with pytest.raises(UserError, match="being written by another run"):
            write_dataset(make_source("synthetic", "2"), out, 8, workers=0, progress=False)
        assert not (out / "meta.json").exists()
    finally:
        os.close(held)
    meta = write_dataset(make_source("synthetic", "2"), out, 8, workers=0, progress=False)
    assert meta["count"] == 2


@pytest.mark.parametrize("bad", [48, 2048, 2])
def test_make_lmdb_max_res_is_a_usage_error(tmp_path, bad):
    from datasets_prep.make_lmdb import main as make_lmdb

    r = CliRunner().invoke(make_lmdb, ["synthetic", "2", str(tmp_path / "o"), "--max-res", bad])
    assert r.exit_code == 2, r.output
    assert f"--max-res {bad}: a power of two from 4 to 1024" in r.output
    assert not (tmp_path / "o").exists()


def test_progressive_help_lists_train_first():
    from progressive.cli.main import main

    text = CliRunner().invoke(main, ["--help"]).output
    commands = text.split("Commands:", 1)[1].split()
    assert commands[0] == "train"
