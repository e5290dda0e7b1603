"""What the integrity checks cost: the per-step divergence check, and per-record checksums.

    python bench/bench_checks.py [--device cpu|cuda] [--repeats 9]

Step check: the demo preset's networks (and, with --widths default, the full-size ones) at
16 and 32 px; each repeat times a block of training steps without the check and a block with
the training loop's check (`FiniteSteps.add`) after every step, in alternating order; the
table gives the median time per step of each and the median of the paired ratios ("with /
without", 1.00 = no cost). On the CPU the verdict is read after every step; on a GPU it stays
on the device until the next tick, so the check adds no wait there.

Reader: the same synthetic images written twice, once in the current format (every record
sealed with a CRC32) and once in the older format without checksums, raw and PNG at 32, 64
and 256 px; images/s of `ImageDataset.batch` (batches of 64, in the main process), median over
repeats, paired ratio as above.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import lmdb
import torch

ROOT = Path(__file__).resolve().parent.parent

from bench_train import make_trainer, sync  # noqa: E402
from machine import describe  # noqa: E402

from datasets_prep import make_source, write_dataset  # noqa: E402
from progressive.core.files import write_json_atomic  # noqa: E402
from progressive.data.format import unseal  # noqa: E402
from progressive.data.reader import ImageDataset  # noqa: E402
from progressive.train.monitor import FiniteSteps  # noqa: E402


def bench_step_check(res: int, widths: str, device: str, steps: int, repeats: int) -> dict:
    batch = 16
    trainer, phase = make_trainer(res, batch, "no", widths=widths, device=device)
    real = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8)
    shown = 0
    finite = FiniteSteps(torch.device(device), "no")

    def block(check: bool) -> float:
        nonlocal shown
        sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            stats = trainer.step(real, phase, shown)
            shown += batch
            if check:
                assert finite.add(stats, shown) is None
        sync(device)
        return (time.perf_counter() - t) / steps

    block(False)  # warm-up
    without, with_check = [], []
    for r in range(repeats):
        order = (False, True) if r % 2 == 0 else (True, False)
        for check in order:
            (with_check if check else without).append(block(check))
    ratios = [w / o for w, o in zip(with_check, without, strict=True)]
    return {"res": res, "widths": widths, "device": device, "batch": batch, "steps": steps,
            "without_s": without, "with_s": with_check,
            "median_without_ms": 1e3 * statistics.median(without),
            "median_with_ms": 1e3 * statistics.median(with_check),
            "paired_ratio": statistics.median(ratios)}


def unsealed_copy(src: Path, dst: Path) -> None:
    """The same dataset in the older format: no seals, no recorded shard sizes."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "meta.json").read_text())
    for shard in meta["shards"]:
        path = dst / shard["path"]
        shutil.rmtree(path)
        with lmdb.open(str(src / shard["path"]), readonly=True, lock=False) as a, \
                lmdb.open(str(path), map_size=1 << 32) as b:
            with a.begin() as r, b.begin(write=True) as w:
                for key, value in r.cursor():
                    w.put(key, unseal(bytes(key), bytes(value)))
        del shard["bytes"]
    meta["version"] = 1
    write_json_atomic(dst / "meta.json", meta)


def bench_reader(work: Path, encoding: str, res: int, count: int, repeats: int) -> dict:
    sealed = work / f"{encoding}-{res}-v2"
    write_dataset(make_source("synthetic", str(count)), sealed, res, encoding=encoding,
                  workers=0, progress=False)
    plain = work / f"{encoding}-{res}-v1"
    unsealed_copy(sealed, plain)
    datasets = {"checksums": ImageDataset(sealed, res), "none": ImageDataset(plain, res)}
    assert torch.equal(datasets["checksums"].batch([0, 1]), datasets["none"].batch([0, 1]))
    batches = [list(range(i, i + 64)) for i in range(0, count - 63, 64)]

    def rate(ds: ImageDataset) -> float:
        t = time.perf_counter()
        for b in batches:
            ds.batch(b)
        return len(batches) * 64 / (time.perf_counter() - t)

    for ds in datasets.values():
        rate(ds)  # warm the page cache
    rates: dict[str, list[float]] = {"checksums": [], "none": []}
    for r in range(repeats):
        for name in (("none", "checksums") if r % 2 == 0 else ("checksums", "none")):
            rates[name].append(rate(datasets[name]))
    ratios = [c / n for c, n in zip(rates["checksums"], rates["none"], strict=True)]
    return {"encoding": encoding, "res": res, "count": count, "rates": rates,
            "median_checksums": statistics.median(rates["checksums"]),
            "median_none": statistics.median(rates["none"]),
            "paired_ratio": statistics.median(ratios)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--widths", default="demo", choices=["demo", "default"])
    ap.add_argument("--skip-reader", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "checks.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    machine = describe()
    print(json.dumps(machine))

    steps = []
    print("\nper-step divergence check (ms per step, median; ratio: with / without, paired)")
    print("| res | widths | device | without | with check | ratio |\n|---|---|---|---:|---:|---:|")
    for res in (16, 32):
        row = bench_step_check(res, args.widths, args.device, steps=20, repeats=args.repeats)
        steps.append(row)
        print(f"| {res} | {args.widths} | {args.device} | {row['median_without_ms']:.2f} | "
              f"{row['median_with_ms']:.2f} | {row['paired_ratio']:.3f} |", flush=True)

    readers = []
    if not args.skip_reader:
        print("\nreader, images/s in the main process (ratio: checksums / none, paired)")
        print("| encoding | res | no checksums | checksums | ratio |\n|---|---|---:|---:|---:|")
        work = Path(tempfile.mkdtemp(prefix="bench-checks-"))
        try:
            for encoding, res, count in (("raw", 32, 2048), ("raw", 64, 2048),
                                         ("raw", 256, 512), ("png", 32, 2048),
                                         ("png", 256, 256)):
                row = bench_reader(work, encoding, res, count, args.repeats)
                readers.append(row)
                print(f"| {encoding} | {res} | {row['median_none']:,.0f} | "
                      f"{row['median_checksums']:,.0f} | {row['paired_ratio']:.3f} |",
                      flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "step_check": steps, "reader": readers},
                              indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
