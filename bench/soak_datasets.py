"""A catalogue of damaged datasets, each tried with every command that reads datasets.

    OMP_NUM_THREADS=1 python bench/soak_datasets.py [--out DIR] [--json results.json]

Builds a small dataset (synthetic, 8x8, three shards) in three flavours: PNG and raw records
in the current format, and PNG records in the older format without checksums. Each kind of
damage (all of them on PNG, the record-level ones on raw, the ones the older format can still
catch on it) is applied to a fresh copy, then `train` (with and without DataLoader workers),
`evaluate`, `reconstruct`, `energy`, `info` and `info --verify` run on it, one process at a
time. An outcome is "refused" (exit status 1, exactly one `Error:` line, no traceback), "ran"
(exit status 0: the damaged part was never read, or the damage is not detectable in that
flavour), or "BAD" (a signal, a traceback, any other exit status, or several error lines).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lmdb
from machine import describe

from progressive.core.files import write_json_atomic
from progressive.data.format import image_key, read_meta, unseal

TINY = ["--latent", "8", "--fmap-base", "64", "--fmap-max", "16", "--mixed-precision", "no",
        "--max-res", "8", "--batch", "4", "--fade-kimg", "0.04", "--stable-kimg", "0.04"]


def run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=Path(__file__).resolve().parent.parent)


def progressive(*args: str) -> subprocess.CompletedProcess:
    return run(["-m", "progressive", *args])


def to_version1(root: Path) -> None:
    """Rewrite a dataset in the older format: values without seals, no shard sizes."""
    meta = json.loads((root / "meta.json").read_text())
    for shard in meta["shards"]:
        path = root / shard["path"]
        tmp = path.with_name(path.name + ".v1")
        src = lmdb.open(str(path), readonly=True, lock=False)
        dst = lmdb.open(str(tmp), map_size=64 << 20)
        with src.begin() as r, dst.begin(write=True) as w:
            for key, value in r.cursor():
                w.put(key, unseal(bytes(key), bytes(value)))
        src.close()
        dst.close()
        shutil.rmtree(path)
        tmp.rename(path)
        del shard["bytes"]
    meta["version"] = 1
    write_json_atomic(root / "meta.json", meta)


# ---- damage ---------------------------------------------------------------------------------


def _data(root: Path, shard: int = 0) -> Path:
    return root / f"shard-{shard:05d}.lmdb" / "data.mdb"


def truncate_shard(root: Path) -> None:
    f = _data(root)
    os.truncate(f, f.stat().st_size // 2)


def extend_shard(root: Path) -> None:
    with open(_data(root), "ab") as f:
        f.write(bytes(4096))


def flip_records(root: Path) -> None:
    """One byte flipped in the middle of images 0..3 at every resolution."""
    meta = read_meta(root)
    env = lmdb.open(str(root / meta["shards"][0]["path"]), readonly=True, lock=False)
    with env.begin() as txn:
        values = [txn.get(image_key(r, i)) for r in meta["resolutions"] for i in range(4)]
    env.close()
    blob = bytearray(_data(root).read_bytes())
    for v in values:  # every copy: the file also holds stale copies of rewritten pages
        at = blob.find(v)
        assert at >= 0, "record not found"
        while at >= 0:
            blob[at + len(v) // 2] ^= 0x5A
            at = blob.find(v, at + 1)
    _data(root).write_bytes(bytes(blob))


def _overwrite_pages(root: Path, fill) -> None:
    f = _data(root)
    blob = bytearray(f.read_bytes())
    start = 4096 * max(2, len(blob) // 4096 // 3)
    blob[start : start + 3 * 4096] = fill(3 * 4096)
    f.write_bytes(bytes(blob))


def zero_pages(root: Path) -> None:
    _overwrite_pages(root, bytes)


def random_pages(root: Path) -> None:
    _overwrite_pages(root, random.Random(0).randbytes)


def wrong_count(root: Path) -> None:
    meta = json.loads((root / "meta.json").read_text())
    meta["count"] += 5
    meta["shards"][-1]["count"] += 5
    (root / "meta.json").write_text(json.dumps(meta))


def missing_shard(root: Path) -> None:
    shutil.rmtree(root / "shard-00001.lmdb")


def wrong_version(root: Path) -> None:
    meta = json.loads((root / "meta.json").read_text())
    meta["version"] = 99
    (root / "meta.json").write_text(json.dumps(meta))


def cut_meta(root: Path) -> None:
    text = (root / "meta.json").read_text()
    (root / "meta.json").write_text(text[: len(text) // 2])


def swap_records(root: Path) -> None:
    """Images 0 and 1 exchanged at 8x8 (each value whole, in the other's place)."""
    env = lmdb.open(str(root / "shard-00000.lmdb"), map_size=64 << 20)
    with env.begin(write=True) as txn:
        a, b = txn.get(image_key(8, 0)), txn.get(image_key(8, 1))
        txn.put(image_key(8, 0), b)
        txn.put(image_key(8, 1), a)
    env.close()


DAMAGE = {
    "truncated shard": truncate_shard,
    "shard with bytes appended": extend_shard,
    "flipped bytes in records": flip_records,
    "zeroed pages": zero_pages,
    "random bytes over pages": random_pages,
    "wrong count": wrong_count,
    "missing shard": missing_shard,
    "wrong version": wrong_version,
    "meta.json cut short": cut_meta,
    "records swapped": swap_records,
}


# ---- commands -------------------------------------------------------------------------------


def commands(data: Path, ckpt: Path, work: Path) -> dict[str, list[str]]:
    train = ["train", "--data", str(data), "--outdir", str(work), *TINY]
    return {
        "train": [*train, "--workers", "0", "--name", "w0"],
        "train --workers 1": [*train, "--workers", "1", "--name", "w1"],
        "evaluate": ["evaluate", "--ckpt", str(ckpt), "--data", str(data), "--n", "16",
                     "--metrics", "recon"],
        "reconstruct": ["reconstruct", "--ckpt", str(ckpt), "--data", str(data), "--n", "8",
                        "--out", str(work / "rec.png")],
        "energy": ["energy", "--ckpt", str(ckpt), "--data", str(data),
                   "--out", str(work / "e.csv")],
        "info": ["info", str(data)],
        "info --verify": ["info", str(data), "--verify"],
    }


def classify(done: subprocess.CompletedProcess) -> str:
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    if done.returncode == 0 and "Traceback" not in done.stderr:
        return "ran"
    if done.returncode == 1 and len(errors) == 1 and "Traceback" not in done.stderr:
        return "refused"
    return "BAD"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="Work folder (default: temporary).")
    ap.add_argument("--json", type=Path, default=None, help="Write the results here.")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="soak-datasets-"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    flavours = {}
    for name, encoding in (("png", "png"), ("raw", "raw")):
        path = out / f"good-{name}"
        shutil.rmtree(path, ignore_errors=True)
        done = run(["tools/make_lmdb.py", "synthetic", "48", str(path), "--max-res", "8",
                    "--encoding", encoding, "--shard-size", "16", "--workers", "0"])
        assert done.returncode == 0, done.stderr
        flavours[name] = path
    old = out / "good-png-v1"
    shutil.rmtree(old, ignore_errors=True)
    shutil.copytree(flavours["png"], old)
    to_version1(old)
    flavours["png, older format"] = old

    shutil.rmtree(out / "runs", ignore_errors=True)
    done = progressive("train", "--data", str(flavours["raw"]), "--outdir", str(out / "runs"),
                       "--name", "model", "--workers", "0", *TINY)
    assert done.returncode == 0, done.stderr
    ckpt = out / "runs" / "model"
    for flavour, good in flavours.items():  # the undamaged datasets pass every command
        work = out / "work"
        shutil.rmtree(work, ignore_errors=True)
        for cmd, argv in commands(good, ckpt, work).items():
            outcome = classify(progressive(*argv))
            assert outcome == "ran", (flavour, cmd, outcome)

    # Every damage on the PNG flavour; on the others, what their own checks are for.
    plan = {"png": list(DAMAGE),
            "raw": ["flipped bytes in records", "zeroed pages", "random bytes over pages"],
            "png, older format": ["truncated shard", "flipped bytes in records", "zeroed pages",
                                  "random bytes over pages", "wrong count", "missing shard"]}
    results = []
    for flavour, good in flavours.items():
        for damage in plan[flavour]:
            apply = DAMAGE[damage]
            data = out / "damaged"
            shutil.rmtree(data, ignore_errors=True)
            shutil.copytree(good, data)
            apply(data)
            for cmd, argv in commands(data, ckpt, out / "work").items():
                shutil.rmtree(out / "work", ignore_errors=True)
                done = progressive(*argv)
                outcome = classify(done)
                error = next((ln for ln in done.stderr.splitlines() if ln.startswith("Error:")),
                             done.stderr.strip().splitlines()[-1] if outcome == "BAD" and
                             done.stderr.strip() else "")
                results.append({"flavour": flavour, "damage": damage, "command": cmd,
                                "outcome": outcome, "returncode": done.returncode,
                                "message": error[:300]})
                print(f"{flavour:18s} {damage:26s} {cmd:18s} {outcome:8s} {error[:110]}",
                      flush=True)
    counts = {k: sum(r["outcome"] == k for r in results) for k in ("refused", "ran", "BAD")}
    summary = {"machine": describe(), "runs": len(results), **counts,
               "seconds": round(time.perf_counter() - start, 1), "results": results}
    print(f"\n{len(results)} runs: {counts['refused']} refused with one line, {counts['ran']} ran "
          f"(damage not read or not detectable), {counts['BAD']} BAD")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
