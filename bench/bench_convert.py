"""Conversion speed of tools/make_lmdb.py against a plain single-process Pillow loop, and the
peak memory of a large conversion.

    python bench/bench_convert.py [--data /work/shared/data/celeba-crops] [--count 2000]
    python bench/bench_convert.py --memory   # also 30,000 synthetic images at 256 (minutes)

Speed: `--count` real JPEGs to --max-res 128 (auto encoding: raw at every level). The baseline
does the same work (decode, RGB, center crop, Lanczos resize, box pyramid, encode) in one
process with the same functions and writes the same bytes under the same keys to one LMDB,
committing every 256 images; the writer runs with 1 worker (in-process) and 2 worker
processes, which write the shard themselves. A fourth row runs the baseline loop in two
processes on half the images each: the ceiling two processes reach on the machine. Medians of
--repeats runs, in rotating order; "paired" is the median of each repeat's ratio to the
baseline of the same repeat.
Memory: the converting process tree is sampled every 0.5 s; proportional set size (PSS: shared
pages split between processes) summed over the tree.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lmdb
import psutil
from machine import describe
from PIL import Image

from datasets_prep import make_source, write_dataset
from progressive.core import images as im
from progressive.data.format import image_key


def baseline(paths: list[Path], out: Path, max_res: int) -> int:
    """The plain loop: same pixels and bytes as the writer, no processes, no robustness."""
    env = lmdb.open(str(out), map_size=1 << 30, sync=False, metasync=False)  # as the writer
    txn = env.begin(write=True)
    for i, p in enumerate(paths):
        levels = im.pyramid(im.crop_resize(im.open_image(str(p)), max_res))
        for r, x in levels.items():
            txn.put(image_key(r, i), im.encode(x, "raw" if r <= 128 else "png"))
        if (i + 1) % 256 == 0:
            txn.commit()
            txn = env.begin(write=True)
    txn.commit()
    env.sync(True)
    env.close()
    return len(paths)


def two_halves(paths: list[Path], out: Path, max_res: int) -> int:
    """The baseline loop in two forked processes, each on half the images with its own LMDB:
    the most two processes can do on this machine, with no coordination at all."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=baseline, args=(paths[i::2], out.with_name(f"{out.name}-{i}"),
                                                max_res)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    return len(paths)


def _cpu_seconds() -> tuple[float, float]:
    """User + system CPU of this process, and of its finished children (worker processes)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime, b.ru_utime + b.ru_stime


def same_bytes(a: Path, b: Path) -> bool:
    """The baseline LMDB and the writer's single shard hold identical items."""
    ea, eb = lmdb.open(str(a), readonly=True, lock=False), lmdb.open(str(b), readonly=True,
                                                                       lock=False)
    with ea.begin() as ta, eb.begin() as tb:
        ok = list(ta.cursor()) == list(tb.cursor())
    ea.close()
    eb.close()
    return ok


def bench_speed(data: Path, count: int, max_res: int, repeats: int) -> dict:
    # The first `count` JPEGs (sorted) big enough for max_res: both sides then accept them all.
    paths = []
    for p in sorted(p for p in data.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")):
        with Image.open(p) as img:
            if min(img.size) >= max_res:
                paths.append(p)
        if len(paths) == count:
            break
    if len(paths) < count:
        sys.exit(f"{data} has only {len(paths)} JPEGs, fewer than --count {count}")
    times: dict[str, list[float]] = {"baseline": [], "writer, 1 worker": [],
                                     "writer, 2 workers": [], "2 plain loops, half each": []}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    cpu_self: dict[str, list[float]] = {k: [] for k in times}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subset = tmp / "in"
        subset.mkdir()
        for p in paths:  # the writer reads a folder: exactly these files, as plain files
            shutil.copyfile(p, subset / p.name)
        checked = False
        names = list(times)
        for rep in range(repeats):
            # A different order each repeat, so slow drifts of the machine hit every method.
            for name in names[rep % len(names):] + names[: rep % len(names)]:
                out = tmp / f"{rep}-{name.replace(' ', '').replace(',', '-')}"
                t, c = time.perf_counter(), _cpu_seconds()
                if name == "baseline":
                    n = baseline(paths, out, max_res)
                elif name.startswith("2 plain loops"):
                    n = two_halves(paths, out, max_res)
                else:
                    w = 1 if "1 worker" in name else 2
                    meta = write_dataset(make_source("folder", str(subset)), out, max_res,
                                         workers=w, progress=False)
                    n = meta["count"]
                dt, c1 = time.perf_counter() - t, _cpu_seconds()
                assert n == count, (name, n)
                times[name].append(n / dt)
                cpu[name].append(1000 * (sum(c1) - sum(c)) / n)
                cpu_self[name].append(1000 * (c1[0] - c[0]) / n)
            if not checked:
                base = tmp / f"{rep}-baseline"
                tool = tmp / f"{rep}-writer-2workers" / "shard-00000.lmdb"
                assert same_bytes(base, tool), "the baseline and the writer disagree"
                checked = True
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"count": count, "max_res": max_res, "repeats": repeats, "images_per_s": times,
            "median_images_per_s": med, "cpu_ms_per_image": cpu,
            "median_cpu_ms_per_image": {k: statistics.median(v) for k, v in cpu.items()},
            "cpu_ms_per_image_this_process": cpu_self,
            "ratio_vs_baseline": {k: v / med["baseline"] for k, v in med.items()},
            # Each repeat against the baseline of the same repeat: robust to a machine whose
            # speed drifts between repeats.
            "paired_ratio_vs_baseline": {
                k: statistics.median(a / b for a, b in zip(v, times["baseline"], strict=True))
                for k, v in times.items()}}


def bench_memory(count: int, res: int, workers: int) -> dict:
    """Convert `count` synthetic images in a child process; sample its tree's memory."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "out")
        code = (
            "from datasets_prep import make_source, write_dataset\n"
            f"m = write_dataset(make_source('synthetic', '{count}'), {out!r}, {res},"
            f" workers={workers}, progress=False)\n"
            "print(m['count'], m['elapsed_s'], m['size_bytes'])\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        root = psutil.Process(proc.pid)
        peak_pss = peak_rss_parent = peak_rss_worker = 0
        while proc.poll() is None:
            try:
                procs = [root, *root.children(recursive=True)]
                pss = 0
                for p in procs:
                    info = p.memory_full_info()
                    pss += info.pss
                    if p.pid == root.pid:
                        peak_rss_parent = max(peak_rss_parent, info.rss)
                    else:
                        peak_rss_worker = max(peak_rss_worker, info.rss)
                peak_pss = max(peak_pss, pss)
            except psutil.Error:
                pass
            time.sleep(0.5)
        out = proc.stdout.read().split()
    n, elapsed, size = int(out[0]), float(out[1]), int(out[2])
    mib = 1 / 2**20
    return {"count": n, "res": res, "workers": workers, "elapsed_s": elapsed,
            "images_per_s": n / elapsed, "dataset_mib": size * mib,
            "peak_pss_total_mib": peak_pss * mib, "peak_rss_parent_mib": peak_rss_parent * mib,
            "peak_rss_worker_mib": peak_rss_worker * mib}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/celeba-crops"))
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--max-res", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--memory", action="store_true", help="also run the memory benchmark")
    ap.add_argument("--memory-count", type=int, default=30000)
    ap.add_argument("--memory-res", type=int, default=256)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("bench/results/convert.json"))
    args = ap.parse_args()
    result = {"machine": describe()}
    if not args.skip_speed:
        s = bench_speed(args.data, args.count, args.max_res, args.repeats)
        result["speed"] = s
        print(f"\n{s['count']} JPEGs from {args.data} to max-res {s['max_res']}, "
              f"median of {s['repeats']}")
        print(f"| {'method':<24} | {'images/s':>9} | {'vs baseline':>11} | {'paired':>7} | "
              f"{'CPU ms/image':>12} |")
        print(f"|{'-' * 26}|{'-' * 11}|{'-' * 13}|{'-' * 9}|{'-' * 14}|")
        for k, v in s["median_images_per_s"].items():
            print(f"| {k:<24} | {v:>9.1f} | {s['ratio_vs_baseline'][k]:>10.2f}x | "
                  f"{s['paired_ratio_vs_baseline'][k]:>6.2f}x | "
                  f"{s['median_cpu_ms_per_image'][k]:>12.2f} |")
    if args.memory:
        m = bench_memory(args.memory_count, args.memory_res, os.cpu_count() or 1)
        result["memory"] = m
        print(f"\nmemory: {m['count']} synthetic images at {m['res']}, {m['workers']} workers: "
              f"{m['images_per_s']:.1f} images/s, peak PSS of the process tree "
              f"{m['peak_pss_total_mib']:.0f} MiB (parent RSS {m['peak_rss_parent_mib']:.0f} "
              f"MiB, worker RSS {m['peak_rss_worker_mib']:.0f} MiB), dataset "
              f"{m['dataset_mib']:.0f} MiB")
    result["machine"]["load_avg_end"] = os.getloadavg()[0]
    print(f"\nmachine: {result['machine']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
