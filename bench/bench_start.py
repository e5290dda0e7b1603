"""How soon `progressive train --max-res R` (typed as is) trains on a fresh machine, and the
disk its built-in data takes.

    python bench/bench_start.py                  # --max-res 1024
    python bench/bench_start.py --max-res 256 512 1024

For each R: the command runs in a fresh, empty runs folder (so the built-in data is rendered
from scratch); reported are the seconds until the built-in data is complete (its meta.json),
until the first training statistics line (the first tick: `tick_kimg` images trained), and the
built-in data's size on disk. The run is then stopped. The baseline in the same run is the
plan `--dry-run` predicts for the data (one image rendered and encoded, timed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from machine import describe, headline, load_line, write_report  # noqa: E402

from progressive.core.files import tree_size  # noqa: E402


def first_steps(max_res: int, limit_s: float) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench-start-"))
    try:
        plan = subprocess.run(
            [sys.executable, "-m", "progressive", "train", "--max-res", str(max_res),
             "--dry-run", "--calibration-seconds", "0", "--outdir", str(out)],
            cwd=ROOT, capture_output=True, text=True, check=True)
        data_plan = json.loads(plan.stdout)["builtin_data"]
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "progressive", "train", "--max-res", str(max_res),
             "--outdir", str(out)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        data_dir = out / "_builtin" / Path(data_plan["path"]).name
        stats = out / f"auto-{max_res}" / "stats.jsonl"
        data_s = train_s = None
        while time.perf_counter() - start < limit_s and proc.poll() is None:
            now = time.perf_counter() - start
            if data_s is None and (data_dir / "meta.json").exists():
                data_s = now
            if stats.exists() and stats.stat().st_size > 0:
                train_s = now
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # a background job's SIGINT may be ignored
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        first = json.loads(stats.read_text().splitlines()[0]) if train_s else {}
        return {
            "max_res": max_res, "images": data_plan["images"], "encoding": data_plan["encoding"],
            "data_seconds": data_s, "first_tick_seconds": train_s,
            "first_tick_images": first.get("images_shown"),
            "disk_bytes": tree_size(data_dir) if data_dir.exists() else None,
            "planned_disk_bytes": data_plan["disk_bytes_expected"],
            "planned_data_seconds": data_plan["seconds_expected"],
            "mixed_precision": first.get("mixed_precision"),
        }
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-res", type=int, nargs="+", default=[1024])
    ap.add_argument("--limit-s", type=float, default=600.0, help="give up after this long")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "start.json"))
    args = ap.parse_args()
    machine = describe()
    print(headline(machine), flush=True)
    rows = [first_steps(r, args.limit_s) for r in args.max_res]
    machine["load_avg_end"] = os.getloadavg()[0]
    fmt = lambda v, f: "-" if v is None else f.format(v)  # noqa: E731
    print("| --max-res | built-in images | encoding | data ready (s) | planned (s) "
          "| first tick (s) | disk | planned disk |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['max_res']} | {r['images']} | {r['encoding']} "
              f"| {fmt(r['data_seconds'], '{:.0f}')} | {r['planned_data_seconds']:.0f} "
              f"| {fmt(r['first_tick_seconds'], '{:.0f}')} "
              f"| {fmt(r['disk_bytes'] and r['disk_bytes'] / 1e6, '{:.0f} MB')} "
              f"| {r['planned_disk_bytes'] / 1e6:.0f} MB |")
    print(load_line(machine))
    out = write_report(args.out, {"machine": machine, "args": vars(args), "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
