"""Reader throughput: images/s of the LMDB reader against ImageFolder + Pillow resize.

    python bench/bench_reader.py                       # celeba-crops, 32..256, 0 and 2 workers
    python bench/bench_reader.py --train-rate 32=900 --train-rate 64=400

Both sides read the same JPEGs: the baseline decodes each with Pillow, center-crops it to a
square and resizes it with Lanczos (what the writer does once, ahead of time); the reader
decodes what tools/make_lmdb.py stored. Both go through the same sampler and DataLoader
(batch 64, fork workers). images/s is the median over repeats of a fixed number of batches
drawn after the first one; the time to the first batch (worker start-up) is reported apart,
since a training run builds a loader only once per stage.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lmdb
import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from progressive.data import ImageDataset, InfiniteSampler, _worker_init, make_loader  # noqa: E402
from progressive.dataset_format import (  # noqa: E402
    FORMAT,
    VERSION,
    image_key,
    resolutions_up_to,
    shard_name,
    write_json_atomic,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class CropResize:
    """Center square crop and Lanczos resize to `res`, as a uint8 CHW tensor."""

    def __init__(self, res: int):
        self.res = res

    def __call__(self, img: Image.Image) -> torch.Tensor:
        w, h = img.size
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
        img = img.resize((self.res, self.res), Image.Resampling.LANCZOS, box=box)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def images_only(batch: list) -> torch.Tensor:
    return torch.stack([image for image, _ in batch])


def baseline_loader(folder: Path, res: int, batch: int, workers: int, start: int) -> DataLoader:
    dataset = ImageFolder(str(folder), transform=CropResize(res))
    sampler = InfiniteSampler(len(dataset), seed=0, start=start)
    extra = {}
    if workers:
        extra = dict(multiprocessing_context="fork", prefetch_factor=4, worker_init_fn=_worker_init)
    return DataLoader(
        dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
        collate_fn=images_only, **extra,
    )


def time_batches(loader: DataLoader, batches: int) -> tuple[float, float]:
    """(seconds to the first batch of a fresh iterator, seconds for the next `batches`)."""
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    t1 = time.perf_counter()
    for _ in range(batches):
        next(it)
    t2 = time.perf_counter()
    del it  # shut the workers down before the next measurement
    return t1 - t0, t2 - t1


def warm_up(dataset: ImageDataset, folder: Path, n: int) -> None:
    """Read the stored values and the JPEG files of the first `n` sampled images, untimed."""
    indices = list(itertools.islice(iter(InfiniteSampler(len(dataset), seed=0)), n))
    dataset._read(indices)
    files = ImageFolder(str(folder)).samples
    for i in indices:
        Path(files[i][0]).read_bytes()


def symlink_folder(images: Path, into: Path) -> Path:
    """ImageFolder wants class subfolders: one class holding links to every image."""
    cls = into / "all"
    cls.mkdir(parents=True)
    for p in sorted(images.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            (cls / p.name).symlink_to(p.resolve())
    return into


def build_lmdb(images: Path, out: Path, max_res: int) -> str:
    """Make the dataset with tools/make_lmdb.py; if the tool refuses (it never upsamples, and
    these crops are about 200 px), write it here the same way, upsampling. Returns who wrote it."""
    if (out / "meta.json").exists():
        print(f"using the existing dataset {out}")
        return json.loads((out / "meta.json").read_text()).get("written_by", "tools/make_lmdb.py")
    cmd = [sys.executable, str(ROOT / "tools" / "make_lmdb.py"), "folder", str(images), str(out),
           "--max-res", str(max_res), "--overwrite"]
    print("building:", " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode == 0:
        return "tools/make_lmdb.py"
    print(f"tools/make_lmdb.py refused: {done.stderr.strip().splitlines()[-1]}")
    print("writing the dataset here instead: Lanczos (upsampling), box pyramid, "
          "raw <= 256 like the writer's auto encoding, png above")
    write_upsampled(images, out, max_res)
    return "bench_reader.py"


def _prepare(args: tuple[str, list[int]]) -> dict[int, bytes]:
    path, resolutions = args
    with Image.open(path) as img:
        img = CropResize(resolutions[-1])(img.convert("RGB")).permute(1, 2, 0).numpy()
    level = img.astype(np.float64)
    out = {}
    for res in reversed(resolutions):
        if res != resolutions[-1]:  # 2x2 box average of the next higher resolution
            level = level.reshape(res, 2, res, 2, 3).mean(axis=(1, 3))
        pixels = np.clip(np.rint(level), 0, 255).astype(np.uint8)
        level = pixels.astype(np.float64)
        if res <= 256:
            out[res] = pixels.tobytes()
        else:
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG", compress_level=3)
            out[res] = buf.getvalue()
    return out


def write_upsampled(images: Path, out: Path, max_res: int) -> None:
    """A one-shard dataset in the format of progressive.dataset_format."""
    files = sorted(str(p) for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    resolutions = resolutions_up_to(max_res)
    out.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(out / shard_name(0)), map_size=1 << 36)
    with multiprocessing.get_context("fork").Pool() as pool:
        txn = env.begin(write=True)
        jobs = ((f, resolutions) for f in files)
        for index, encoded in enumerate(pool.imap(_prepare, jobs, chunksize=16)):
            for res, value in encoded.items():
                txn.put(image_key(res, index), value)
            if index % 1000 == 999:
                txn.commit()
                txn = env.begin(write=True)
        txn.commit()
    env.close()
    write_json_atomic(out / "meta.json", {
        "format": FORMAT, "version": VERSION, "count": len(files), "max_res": max_res,
        "resolutions": resolutions,
        "encoding": {str(r): "raw" if r <= 256 else "png" for r in resolutions},
        "channels": 3, "crop": "center square", "resize": "lanczos (upsampling allowed)",
        "source": {"kind": "folder", "input": str(images)}, "written_by": "bench_reader.py",
        "shards": [{"path": shard_name(0), "first": 0, "count": len(files)}],
    })


def raw_copy(src: Path, dst: Path) -> None:
    """The dataset at `src` with every resolution stored raw (a larger, faster-to-read variant)."""
    if (dst / "meta.json").exists():
        return
    meta = json.loads((src / "meta.json").read_text())
    dst.mkdir(parents=True, exist_ok=True)
    for shard in meta["shards"]:
        env = lmdb.open(str(dst / shard["path"]), map_size=1 << 36)
        txn = env.begin(write=True)
        for res in meta["resolutions"]:
            dataset = ImageDataset(src, res)
            for index in range(shard["first"], shard["first"] + shard["count"]):
                txn.put(image_key(res, index), dataset[index].permute(1, 2, 0).numpy().tobytes())
            txn.commit()
            txn = env.begin(write=True)
        txn.commit()
        env.close()
    meta["encoding"] = {str(r): "raw" for r in meta["resolutions"]}
    write_json_atomic(dst / "meta.json", meta)


def machine() -> dict:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "python": platform.python_version(),
        "load_avg_1min_at_start": load,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("images", nargs="?", default="/work/shared/data/celeba-crops", type=Path,
                    help="folder of JPEGs (default: %(default)s)")
    ap.add_argument("--lmdb", type=Path, default=None,
                    help="dataset made by tools/make_lmdb.py from IMAGES (built if missing; "
                         "default: a folder under the system temp dir)")
    ap.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=40, help="batches per timed repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-rate", action="append", default=[], metavar="RES=IMAGES_PER_S",
                    help="images/s training consumes at RES, for the 20x check (repeatable)")
    ap.add_argument("--no-raw-variant", dest="raw_variant", action="store_false",
                    help="skip the all-raw copy read at resolutions the writer stores as PNG")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    train_rate = {int(k): float(v) for k, v in (s.split("=") for s in args.train_rate)}

    max_res = max(args.resolutions)
    tmp = Path(tempfile.gettempdir())
    lmdb_dir = args.lmdb or tmp / f"bench-reader-{args.images.name}-{max_res}"
    written_by = build_lmdb(args.images, lmdb_dir, max_res)
    raw_dir = lmdb_dir.with_name(lmdb_dir.name + "-raw")
    if args.raw_variant:
        print(f"raw variant (every resolution raw): {raw_dir}")
        raw_copy(lmdb_dir, raw_dir)
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
          f"load {info['load_avg_1min_at_start']}")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = symlink_folder(args.images, Path(tmp))
        cases = [(res, ImageDataset(lmdb_dir, res)) for res in args.resolutions]
        if args.raw_variant:
            png = [d.res for _, d in cases if d.encoding != "raw"]
            cases += [(res, ImageDataset(raw_dir, res)) for res in png]
        for res, dataset in cases:
            for workers in args.workers:
                times = {"reader": [], "baseline": []}
                first = {"reader": [], "baseline": []}
                # Every repeat reads the same images, first pulled into the page cache: this
                # measures decoding and the pipeline, not the disk (see bench/README.md).
                start = 0
                warm_up(dataset, folder, args.batch * (args.batches + 1))
                for _ in range(args.repeats):
                    loader = make_loader(dataset, args.batch, seed=0, start=start, workers=workers)
                    base = baseline_loader(folder, res, args.batch, workers, start)
                    for name, ld in (("reader", loader), ("baseline", base)):
                        t_first, t_rest = time_batches(ld, args.batches)
                        first[name].append(t_first)
                        times[name].append(t_rest)
                n = args.batch * args.batches
                reader = n / statistics.median(times["reader"])
                baseline = n / statistics.median(times["baseline"])
                row = {
                    "res": res, "workers": workers, "encoding": dataset.encoding,
                    "reader_images_per_s": reader, "baseline_images_per_s": baseline,
                    "ratio": reader / baseline,
                    "reader_first_batch_s": statistics.median(first["reader"]),
                    "baseline_first_batch_s": statistics.median(first["baseline"]),
                    "times_s": times, "first_batch_s": first,
                }
                if res in train_rate:
                    row["train_images_per_s"] = train_rate[res]
                    row["ratio_to_training"] = reader / train_rate[res]
                rows.append(row)
                print(f"  {res:4d} workers={workers}: reader {reader:9.0f}/s  "
                      f"baseline {baseline:7.0f}/s  x{reader / baseline:.1f}", flush=True)

    print()
    tr = " vs training |" if train_rate else ""
    print(f"| res | encoding | workers | reader img/s | ImageFolder+Pillow img/s | ratio |"
          f" first batch, reader / baseline |{tr}")
    print(f"|---|---|---|---|---|---|---|{'---|' if train_rate else ''}")
    for row in rows:
        line = (f"| {row['res']} | {row['encoding']} | {row['workers']} | "
                f"{row['reader_images_per_s']:,.0f} | {row['baseline_images_per_s']:,.0f} | "
                f"{row['ratio']:.1f}x | {row['reader_first_batch_s']:.2f} s / "
                f"{row['baseline_first_batch_s']:.2f} s |")
        if train_rate:
            line += f" {row['ratio_to_training']:.0f}x |" if "ratio_to_training" in row else " |"
        print(line)
    print(f"\nimages/s: median of {args.repeats} repeats of {args.batches} batches of "
          f"{args.batch} after the first batch; "
          f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}")

    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"reader-{time.strftime('%Y%m%d-%H%M%S')}.json"
    result = {
        "machine": info, "images": str(args.images), "lmdb": str(lmdb_dir),
        "lmdb_written_by": written_by, "batch": args.batch,
        "batches": args.batches, "repeats": args.repeats, "rows": rows,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
