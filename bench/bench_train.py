"""Training speed: images/s of one full training step per resolution and precision.

    python bench/bench_train.py                          # 16, 32, 64; batch 16; CPU or GPU
    python bench/bench_train.py --res 32 --batch 4 --steps 2 --precision no
    python bench/bench_train.py --device cuda --precision no tf32 bf16 --steps 20
    python bench/bench_train.py --res 32 64 --widths rule --steps 5   # fp32 vs auto, CPU sizes

Each step is `Trainer.step` (energy contrastive step, then the joint generator + inference
step, Adam updates and the generator average) at default widths (fmap_base 16384, fmap_max
512, latent 512), stable phase (alpha 1). Precisions: `no` (exact fp32), `tf32` (fp32 with
TensorFloat-32 matmuls and convolutions; NVIDIA GPUs), `bf16` and `fp16` (autocast), and `auto`
(what training uses by default: bf16 where the device has it natively, else fp32). `--widths
rule` uses the sizes the default rule gives this device at each resolution instead. The FLOPs
of one step are counted with `torch.utils.flop_counter.FlopCounterMode` during the first
warm-up step. The baseline, measured in the same run, is the machine's matmul peak in each
precision: the best of several large square `torch.mm`, before and after the training steps
(the machine may be shared).
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

from machine import describe, headline, load_line, write_report  # noqa: E402

from progressive.config.migrate import values_0_1  # noqa: E402
from progressive.config.presets import make_config  # noqa: E402
from progressive.config.schedule import Phase  # noqa: E402
from progressive.train import precision as mixed_precision  # noqa: E402
from progressive.train.trainer import Trainer, set_float32_math  # noqa: E402

PRECISIONS = {  # name: (matmul dtype, accelerate mixed precision, tf32)
    "no": (torch.float32, "no", False),
    "tf32": (torch.float32, "no", True),
    "bf16": (torch.bfloat16, "bf16", False),
    "fp16": (torch.float16, "fp16", False),
}
LABELS = {"no": "fp32", "tf32": "tf32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}


def resolved(precision: str, device: str) -> str:
    """`auto` as training resolves it on `device`; any other precision unchanged."""
    return mixed_precision.resolve("auto", device) if precision == "auto" else precision


def label(precision: str, device: str) -> str:
    if precision == "auto":
        return f"auto ({LABELS[resolved(precision, device)]})"
    return LABELS[precision]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(precision: str, device: str) -> float:
    """Best FLOP/s of a large square matmul. On CPUs: 2048 in fp32, 1024 otherwise (bf16 can
    be very slow without native instructions); on GPUs: 8192, random data."""
    dtype, _, tf32 = PRECISIONS[precision]
    if device == "cuda":
        n, repeats = 8192, 10
    else:
        n, repeats = (2048, 5) if dtype == torch.float32 else (1024, 2)
    set_float32_math(tf32)
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3 if device == "cuda" else 1):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t)
    set_float32_math(False)
    return 2 * n**3 / best


def make_trainer(res: int, batch: int, precision: str, widths: str = "default",
                 device: str = "cpu") -> tuple[Trainer, Phase]:
    """A trainer in the stable phase at `res`: default widths, the `demo` preset's, or the
    default rule's for max-res `res` on `device`."""
    sizes = {} if widths == "demo" else {"latent": 512, "fmap_base": 16384, "fmap_max": 512}
    _, mixed, tf32 = PRECISIONS[resolved(precision, device)]
    if widths == "rule":
        net = make_config(None, {"schedule.max_res": max(res, 8)}, device=device).networks
        sizes = {"latent": net.latent, "fmap_base": net.fmap_base, "fmap_max": net.fmap_max,
                 "fmap_min": net.fmap_min}
    cfg = make_config("demo", values_0_1(dict(
        max_res=max(res, 8), start_res=res, batch=batch, mixed_precision=mixed, tf32=tf32,
        workers=0, **sizes)))
    trainer = Trainer.create(cfg, Accelerator(cpu=device == "cpu", mixed_precision=mixed))
    lr = {name: table[res] for name, table in cfg.optim.lr_tables().items()}
    phase = Phase(stage=0, res=res, alpha=1.0, fading=False, batch=batch, lr=lr,
                  stage_start=0, stage_end=None)
    return trainer, phase


def bench_one(res: int, batch: int, precision: str, steps: int, warmup: int,
              device: str, widths: str = "default") -> dict:
    trainer, phase = make_trainer(res, batch, precision, widths, device=device)
    real = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8)
    counter = FlopCounterMode(display=False)
    with counter:  # the first warm-up step, counted
        trainer.step(real, phase, 0)
    flops_per_image = counter.get_total_flops() / batch
    for i in range(1, warmup):  # cuDNN's algorithm search and the allocator settle here
        trainer.step(real, phase, i * batch)
    times = []
    for i in range(steps):
        sync(device)
        t = time.perf_counter()
        stats = trainer.step(real, phase, (warmup + i) * batch)
        sync(device)
        times.append(time.perf_counter() - t)
    finite = bool(all(torch.isfinite(v).all() for v in stats.values()))
    step_s = statistics.median(times)
    memory = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return {"res": res, "batch": batch, "precision": precision, "device": device,
            "resolved_precision": resolved(precision, device), "widths": widths,
            "steps": steps, "warmup": warmup, "step_s": times, "median_step_s": step_s,
            "images_per_s": batch / step_s, "flops_per_image": flops_per_image,
            "flops_per_s": flops_per_image * batch / step_s, "finite": finite,
            "peak_memory_bytes": memory}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", choices=["cpu", "cuda"],
                    default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps (default: 3 on CPU, 20 on GPU)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed steps first (default: 1 on CPU, 3 on GPU)")
    ap.add_argument("--precision", nargs="+", default=None, choices=[*PRECISIONS, "auto"],
                    help="default: no auto on CPU; no tf32 bf16 auto on GPU")
    ap.add_argument("--widths", choices=["default", "demo", "rule"], default="default",
                    help="network sizes: default (16384/512, latent 512), the demo's, or the "
                    "default rule's for this device at each resolution")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train.json"))
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    gpu = args.device == "cuda"
    args.steps = args.steps or (20 if gpu else 3)
    args.warmup = args.warmup or (3 if gpu else 1)
    args.precision = args.precision or (["no", "tf32", "bf16", "auto"] if gpu else ["no", "auto"])
    if args.one:
        row = bench_one(args.res[0], args.batch, args.precision[0], args.steps, args.warmup,
                        args.device, args.widths)
        print(json.dumps(row))
        return

    machine = describe()
    where = f"GPU {machine['gpu']}" if gpu else f"{machine['cores']} cores"
    print(headline(machine, where), flush=True)
    used = dict.fromkeys(["no", *(resolved(p, args.device) for p in args.precision)])
    peak = {p: matmul_peak(p, args.device) for p in used}

    rows = []
    for res in args.res:
        for precision in args.precision:
            # A fresh process per configuration: accelerate's state is per process.
            cmd = [sys.executable, __file__, "--one", "--res", str(res), "--batch",
                   str(args.batch), "--precision", precision, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--device", args.device,
                   "--widths", args.widths]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"res {res} {precision} failed:\n{proc.stderr[-2000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"  done res {res} {precision}: {row['images_per_s']:.3f} images/s", flush=True)

    for p in peak:  # best of before and after: the machine may be shared
        peak[p] = max(peak[p], matmul_peak(p, args.device))
    machine["load_avg_end"] = os.getloadavg()[0]
    fp32 = {r["res"]: r for r in rows if r["precision"] == "no"}
    for r in rows:
        r["share_of_fp32_peak"] = r["flops_per_s"] / peak["no"]
        r["share_of_own_peak"] = r["flops_per_s"] / peak[r["resolved_precision"]]
        if r["res"] in fp32:
            r["vs_fp32"] = r["images_per_s"] / fp32[r["res"]]["images_per_s"]

    unit, scale = ("TFLOP/s", 1e12) if gpu else ("GFLOP/s", 1e9)
    print("\nmatmul peak (best of several, before/after): "
          + ", ".join(f"{LABELS[p]} {v / scale:.1f} {unit}" for p, v in peak.items()))
    print(f"batch {args.batch}, median of {args.steps} steps after {args.warmup} warm-up, "
          f"alpha 1, {args.widths} widths")
    print(f"| res | precision | images/s | vs fp32 | GFLOP/image | {unit} "
          "| share of fp32 peak | share of own peak | peak memory |")
    print("|----:|-----------|---------:|--------:|------------:|------:"
          "|------:|------:|------:|")
    for r in rows:
        memory = (f"{r['peak_memory_bytes'] / 2**30:.1f} GiB" if r["peak_memory_bytes"]
                  else "-")
        print(f"| {r['res']} | {label(r['precision'], args.device)} "
              f"| {r['images_per_s']:.3f} | {r.get('vs_fp32', float('nan')):.2f}x "
              f"| {r['flops_per_image'] / 1e9:.1f} | {r['flops_per_s'] / scale:.1f} "
              f"| {100 * r['share_of_fp32_peak']:.0f}% | {100 * r['share_of_own_peak']:.0f}% "
              f"| {memory} |")
    print(load_line(machine))

    out = write_report(args.out, {"machine": machine, "peak_flops_per_s": peak,
                                  "args": vars(args), "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
