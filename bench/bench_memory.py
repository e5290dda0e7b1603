"""Peak host memory and time of the use commands on a run grown to 1024 px.

    python bench/bench_memory.py [--run RUN] [--workdir DIR] [--kimg 0.004]
        [--out bench/results/memory.json]

Without --run it trains one first: `progressive train --max-res 1024` with the default sizing
rule on the built-in images (200 at 1024 px), each fade-in and stable phase --kimg thousand
images, batch 4, no stage-end evaluation: a run that exists at every resolution, not a trained
model (memory depends on the sizes, not on how well it learned). Then each command runs in its
own child process and its peak resident memory (ru_maxrss from wait4) and wall time are
recorded: `evaluate` with the default metrics against the training images, `sample
--langevin-steps 5 --n 64` and `inpaint --occlude block20 --n 64`, all at 1024 px, against the
8 GB target.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
from machine import describe, headline, load_line, write_report

TARGET_BYTES = 8 * 10**9
PROGRESSIVE = [sys.executable, "-m", "progressive"]


def measure(args: list[str]) -> dict:
    """Run a command in a child process: its exit status, peak resident bytes and seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "peak_bytes": usage.ru_maxrss * 1024,
            "seconds": time.perf_counter() - start, "tail": out.strip().splitlines()[-3:]}


def train(workdir: Path, kimg: float) -> Path:
    """A run grown to 1024 px by the default rule on the built-in images."""
    runs = workdir / "runs"
    help_text = subprocess.run([*PROGRESSIVE, "train", "--help"], capture_output=True,
                               text=True).stdout
    where = "--outdir" if "--outdir" in help_text else "--out"
    args = [*PROGRESSIVE, "train", "--max-res", "1024", "--fade-kimg", str(kimg),
            "--stable-kimg", str(kimg), "--batch", "4", "--set", "run.eval_images=0",
            where, str(runs), "--name", "r1024", "--workers", "0"]
    result = measure(args)
    if result["rc"] != 0:
        raise SystemExit(f"training failed: {result['tail']}")
    print(f"trained {runs / 'r1024'} in {result['seconds']:.0f} s "
          f"(peak {result['peak_bytes'] / 1e9:.2f} GB)")
    return runs / "r1024"


@click.command()
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False),
              help="A run grown to 1024 px. Default: train one.")
@click.option("--workdir", type=click.Path(file_okay=False), default="bench/results/memory-work",
              show_default=True, help="Where the trained run and the outputs go.")
@click.option("--kimg", type=float, default=0.004, show_default=True,
              help="Thousands of images per phase when training.")
@click.option("--only", help="Only the commands whose name starts with this (e.g. inpaint).")
@click.option("--out", type=click.Path(dir_okay=False), default="bench/results/memory.json",
              show_default=True)
def main(run_dir: str | None, workdir: str, kimg: float, only: str | None, out: str) -> None:
    machine = describe()
    print(headline(machine))
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    run = Path(run_dir) if run_dir else train(work, kimg)
    config = json.loads((run / "config.json").read_text())
    data = config["data"] if isinstance(config.get("data"), str) else config["data"]["path"]
    shutil.rmtree(work / "inpainted", ignore_errors=True)
    commands = {
        "evaluate (default metrics)": ["evaluate", "--ckpt", str(run), "--data", data],
        "sample --langevin-steps 5 --n 64": [
            "sample", "--ckpt", str(run), "--langevin-steps", "5", "--n", "64",
            "--out", str(work / "samples.png")],
        "inpaint --occlude block20 --n 64": [
            "inpaint", "--ckpt", str(run), "--data", data, "--occlude", "block20", "--n", "64",
            "--outdir", str(work / "inpainted")],
    }
    rows = {}
    for name, args in commands.items():
        if only and not name.startswith(only):
            continue
        rows[name] = measure([*PROGRESSIVE, *args])
        r = rows[name]
        print(f"  {name}: rc {r['rc']}, {r['peak_bytes'] / 1e9:.2f} GB, {r['seconds']:.0f} s")
        if r["rc"] != 0:
            print("    " + "\n    ".join(r["tail"]))
    machine["load_avg_end"] = os.getloadavg()[0]
    print(f"\nrun {run} ({config.get('max_res')} px, {data})")
    print(f"{'command':36s} {'peak GB':>8s} {'seconds':>8s}  under 8 GB")
    for name, r in rows.items():
        ok = "yes" if r["rc"] == 0 and r["peak_bytes"] < TARGET_BYTES else "NO"
        print(f"{name:36s} {r['peak_bytes'] / 1e9:8.2f} {r['seconds']:8.0f}  {ok}")
    print(load_line(machine))
    path = write_report(out, {"machine": machine, "run": str(run), "data": data,
                              "target_bytes": TARGET_BYTES, "commands": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
