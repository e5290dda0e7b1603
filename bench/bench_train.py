"""Training speed: images/s of one full training step per resolution, fp32 and bf16 autocast.

    python bench/bench_train.py                                  # 16, 32, 64; batch 16
    python bench/bench_train.py --res 32 --batch 4 --steps 2 --precision no

Each step is `Trainer.step` (energy contrastive step, then the joint generator + inference
step, Adam updates and the generator average) at default widths (fmap_base 16384, fmap_max
512, latent 512), stable phase (alpha 1). The FLOPs of one step are counted with
`torch.utils.flop_counter.FlopCounterMode` during the warm-up step. The baseline, measured in
the same run, is the machine's matmul peak: the best of several 2048x2048 `torch.mm` in fp32
(1024x1024 in bf16), before and after the training steps (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import describe  # noqa: E402

from progressive.presets import make_config  # noqa: E402
from progressive.schedule import NETWORKS, Phase  # noqa: E402
from progressive.training import Trainer  # noqa: E402

DTYPES = {"no": torch.float32, "bf16": torch.bfloat16}


def matmul_peak(dtype: torch.dtype) -> float:
    """Best FLOP/s of a large square matmul (2048 in fp32; 1024 in bf16, which can be very
    slow on CPUs without native bf16 instructions)."""
    n, repeats = (2048, 5) if dtype == torch.float32 else (1024, 2)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def make_trainer(res: int, batch: int, precision: str,
                 widths: str = "default") -> tuple[Trainer, Phase]:
    """A trainer in the stable phase at `res`: default widths, or the `demo` preset's."""
    sizes = {} if widths == "demo" else {"latent": 512, "fmap_base": 16384, "fmap_max": 512}
    cfg = make_config("demo", max_res=max(res, 8), start_res=res, batch=batch,
                      mixed_precision=precision, workers=0, **sizes)
    trainer = Trainer.create(cfg, Accelerator(cpu=True, mixed_precision=precision))
    lr = {name: cfg["lr"][name][res] for name in NETWORKS}
    phase = Phase(stage=0, res=res, alpha=1.0, fading=False, batch=batch, lr=lr,
                  stage_start=0, stage_end=None)
    return trainer, phase


def bench_one(res: int, batch: int, precision: str, steps: int) -> dict:
    trainer, phase = make_trainer(res, batch, precision)
    real = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8)
    counter = FlopCounterMode(display=False)
    with counter:  # the warm-up step, counted
        trainer.step(real, phase, 0)
    flops_per_image = counter.get_total_flops() / batch
    times = []
    for i in range(steps):
        t = time.perf_counter()
        stats = trainer.step(real, phase, (i + 1) * batch)
        times.append(time.perf_counter() - t)
    finite = bool(all(torch.isfinite(v).all() for v in stats.values()))
    step_s = statistics.median(times)
    return {"res": res, "batch": batch, "precision": precision, "steps": steps,
            "step_s": times, "median_step_s": step_s, "images_per_s": batch / step_s,
            "flops_per_image": flops_per_image, "flops_per_s": flops_per_image * batch / step_s,
            "finite": finite}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--precision", nargs="+", default=["no", "bf16"], choices=list(DTYPES))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train.json"))
    ap.add_argument("--one", nargs=4, metavar=("RES", "BATCH", "PRECISION", "STEPS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        res, batch, precision, steps = args.one
        print(json.dumps(bench_one(int(res), int(batch), precision, int(steps))))
        return

    machine = describe()
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
          f"{machine['threads']} threads, load average {machine['load_avg_start']:.1f}")
    peak = {p: matmul_peak(DTYPES[p]) for p in args.precision}

    rows = []
    for res in args.res:
        for precision in args.precision:
            # A fresh process per configuration: accelerate's state is per process.
            cmd = [sys.executable, __file__, "--one", str(res), str(args.batch), precision,
                   str(args.steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"res {res} {precision} failed:\n{proc.stderr[-2000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"  done res {res} {precision}: {row['images_per_s']:.3f} images/s", flush=True)

    for p in args.precision:  # best of before and after: the machine may be shared
        peak[p] = max(peak[p], matmul_peak(DTYPES[p]))
    machine["load_avg_end"] = os.getloadavg()[0]
    fp32 = {r["res"]: r for r in rows if r["precision"] == "no"}
    for r in rows:
        r["share_of_fp32_peak"] = r["flops_per_s"] / peak.get("no", matmul_peak(torch.float32))
        if r["res"] in fp32:
            r["vs_fp32"] = r["images_per_s"] / fp32[r["res"]]["images_per_s"]

    print("\nmatmul peak (best of several, before/after): "
          + ", ".join(f"{p} {v / 1e9:.1f} GFLOP/s" for p, v in peak.items()))
    print(f"batch {args.batch}, median of {args.steps} steps after 1 warm-up, alpha 1, "
          "default widths")
    print("| res | precision | images/s | vs fp32 | GFLOP/image | GFLOP/s | share of fp32 peak |")
    print("|----:|-----------|---------:|--------:|------------:|--------:|-------------------:|")
    for r in rows:
        print(f"| {r['res']} | {'fp32' if r['precision'] == 'no' else 'bf16 autocast'} "
              f"| {r['images_per_s']:.3f} | {r.get('vs_fp32', float('nan')):.2f}x "
              f"| {r['flops_per_image'] / 1e9:.1f} | {r['flops_per_s'] / 1e9:.1f} "
              f"| {100 * r['share_of_fp32_peak']:.0f}% |")
    print(f"load average: {machine['load_avg_start']:.1f} at start, "
          f"{machine['load_avg_end']:.1f} at end")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "peak_flops_per_s": peak,
                               "args": vars(args), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
