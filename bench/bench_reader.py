"""Reader throughput: images/s of the LMDB reader against ImageFolder + Pillow resize.

    python bench/bench_reader.py                       # celeba-crops, 32..256, 0 and 2 workers
    python bench/bench_reader.py --train-rate 32=900 --train-rate 64=400

Both sides read the same JPEGs: the baseline decodes each with Pillow, center-crops it to a
square and resizes it with Lanczos (what the writer does once, ahead of time); the reader
decodes what the writer stored (the same crop and resize, upsampling allowed since the crops
are about 200 px, then the writer's box pyramid and `auto` encoding). Both go through the
same sampler and DataLoader (batch 64, fork workers). images/s is the median over repeats of
a fixed number of batches drawn after the first one; the time to the first batch (worker
start-up) is reported apart, since a training run builds a loader only once per stage.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

ROOT = Path(__file__).resolve().parent.parent

from bench_train import make_trainer  # noqa: E402
from machine import describe  # noqa: E402

from datasets_prep import write_dataset  # noqa: E402
from datasets_prep.files import FolderSource  # noqa: E402
from progressive.core.images import is_image_name, to_rgb  # noqa: E402
from progressive.data.reader import ImageDataset, InfiniteSampler, _worker_init, make_loader  # noqa: E402
from progressive.data.writer import encodings_for  # noqa: E402


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
        if is_image_name(p.name):
            (cls / p.name).symlink_to(p.resolve())
    return into


class UpsampledFolder(FolderSource):
    """The folder source with every image first center-cropped and Lanczos-resized to max_res,
    upsampling allowed (as the baseline does): the writer itself never upsamples, and these
    crops are about 200 px. Everything else is the writer's own work."""

    def prepare(self, max_res: int) -> None:
        super().prepare(max_res)
        self.res = max_res

    def load(self, item: str):
        name, img = super().load(item)
        return name, CropResize(self.res)(to_rgb(img)).permute(1, 2, 0).numpy()


def build_lmdb(images: Path, out: Path, max_res: int, encoding: str) -> None:
    """Write the dataset with the writer (reusing one already there)."""
    if (out / "meta.json").exists():
        print(f"using the existing dataset {out}")
        return
    print(f"writing {out} (encoding {encoding})")
    write_dataset(UpsampledFolder(str(images)), out, max_res, encoding=encoding, overwrite=True)


def training_rate(res: int, batch: int = 32, steps: int = 3) -> float:
    """Images/s that one full training step consumes at `res` with the `demo` preset's widths
    (the fastest configuration this project trains on a CPU), median of `steps` steps."""
    trainer, phase = make_trainer(res, batch, "no", widths="demo")
    real = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8)
    trainer.step(real, phase, 0)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        trainer.step(real, phase, (i + 1) * batch)
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("images", nargs="?", default="/work/shared/data/celeba-crops", type=Path,
                    help="folder of JPEGs (default: %(default)s)")
    ap.add_argument("--lmdb", type=Path, default=None,
                    help="dataset written from IMAGES (built if missing; default: a folder "
                         "under the system temp dir)")
    ap.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=40, help="batches per timed repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-rate", action="append", default=[], metavar="RES=IMAGES_PER_S",
                    help="images/s training consumes at RES, for the 20x check (repeatable; "
                         "default: measured here at every RES up to 128)")
    ap.add_argument("--no-raw-variant", dest="raw_variant", action="store_false",
                    help="skip the all-raw dataset read at resolutions `auto` stores as PNG")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    train_rate = {int(k): float(v) for k, v in (s.split("=") for s in args.train_rate)}
    if not args.train_rate:
        for res in (r for r in args.resolutions if r <= 128):
            train_rate[res] = training_rate(res)
            print(f"training consumes {train_rate[res]:.1f} images/s at {res} (demo widths, "
                  "batch 32)", flush=True)

    max_res = max(args.resolutions)
    tmp = Path(tempfile.gettempdir())
    lmdb_dir = args.lmdb or tmp / f"bench-reader-{args.images.name}-{max_res}"
    build_lmdb(args.images, lmdb_dir, max_res, "auto")
    raw_dir = lmdb_dir.with_name(lmdb_dir.name + "-raw")
    has_png = "png" in encodings_for(max_res, "auto").values()
    if args.raw_variant and has_png:
        build_lmdb(args.images, raw_dir, max_res, "raw")
    info = describe()
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
          f"load {info['load_avg_start']}")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = symlink_folder(args.images, Path(tmp))
        cases = [(res, ImageDataset(lmdb_dir, res)) for res in args.resolutions]
        if args.raw_variant and has_png:
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
        "batch": args.batch,
        "batches": args.batches, "repeats": args.repeats, "rows": rows,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
