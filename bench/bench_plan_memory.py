"""`--dry-run`'s peak memory estimate against measured peaks of real training steps on the CPU.

    python bench/bench_plan_memory.py                      # max-res 4..256, fp32 and bf16
    python bench/bench_plan_memory.py --max-res 4 8 16 --precision no

One configuration per child process: the sizing rule's CPU sizes for each --max-res (widths,
latent, batch), plus a wider one (fmap 8192/256, latent 256, batch 8, to 32 px). The child
builds the real `Trainer` (accelerate, real networks and Adam) and runs, stage by stage from
4 px, the steps the estimate replays (`progressive.train.memory.stage_steps`: two fade-in steps
per stage, two stable ones for the first) on random pixels. Measured: the largest "Total
Allocated" of PyTorch's CPU allocator (the profiler's memory events) within each stage's steps.
Only allocations made while the profiler records count, and it starts just before the trainer
is built, so the process's own baseline (imports, the interpreter) is out by construction; the
peak resident set size above the size just before the trainer was built is shown beside it
(glibc keeps freed memory, so it is an upper bound). The estimate is the same figure `progressive
train --dry-run` gives for that stage (`memory.stage_peaks`). Exits 1 if any stage of any
configuration has estimate / measured outside [0.8, 1.25].
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from machine import describe, headline, load_line, write_report  # noqa: E402

BOUNDS = (0.8, 1.25)
LABELS = {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}
WIDE = {"networks.fmap_base": 8192, "networks.fmap_max": 256, "networks.latent": 256,
        "schedule.batch": 8}


def config(max_res: int, wide: bool, precision: str = "auto"):
    from progressive.config.presets import make_config
    from progressive.config.sections import every_res

    values = {"schedule.max_res": max_res, "run.mixed_precision": precision,
              **(WIDE if wide else {})}
    if wide:
        values["schedule.batch"] = every_res(WIDE["schedule.batch"])
    return make_config(None, values, device="cpu")


def stages(cfg) -> list[tuple[int, int, bool]]:
    from progressive.config.schedule import Schedule

    return [(e["res"], e["batch"], e["fade_kimg"] > 0)
            for e in Schedule.from_config(cfg).stage_table()]


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def measure(max_res: int, wide: bool, precision: str, out: Path) -> None:
    """Child: real steps of every stage under the profiler; per-stage allocator peaks as JSON."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from progressive.config.schedule import Phase
    from progressive.train.memory import stage_steps
    from progressive.train.trainer import Trainer

    torch.set_num_threads(1)
    cfg = config(max_res, wide, precision)
    plan = stages(cfg)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set size
    except OSError:
        pass
    rss_before = _rss("VmRSS")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer = Trainer.create(cfg)
        for i, (res, batch, fading) in enumerate(plan):
            for res_, batch_, alpha in stage_steps(res, batch, fading):
                lr = {n: table[res_] for n, table in cfg.optim.lr_tables().items()}
                phase = Phase(0, res_, alpha, alpha < 1.0, batch_, lr, 0, None)
                real = torch.randint(0, 256, (batch_, 3, res_, res_), dtype=torch.uint8)
                with record_function(f"stage {i}"):
                    trainer.step(real, phase, 0)
                del real
    rss_peak = _rss("VmHWM") - rss_before
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    spans: dict[int, list[tuple[float, float]]] = {}
    for e in events:
        if e.get("ph") == "X" and str(e.get("name", "")).startswith("stage "):
            spans.setdefault(int(e["name"].split()[1]), []).append((e["ts"], e["ts"] + e["dur"]))
    memory = sorted((e["ts"], e["args"]["Total Allocated"]) for e in events
                    if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0)
    peaks = []
    for i in range(len(plan)):
        inside = [b for ts, b in memory if any(a <= ts <= z for a, z in spans[i])]
        before = [b for ts, b in memory if ts < min(a for a, _ in spans[i])]
        peaks.append(max(inside + before[-1:]))
    out.write_text(json.dumps({"peaks": peaks, "rss_peak_delta": rss_peak}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-res", type=int, nargs="+", default=[4, 8, 16, 32, 64, 128, 256])
    ap.add_argument("--precision", nargs="+", default=["no", "bf16"], choices=list(LABELS))
    ap.add_argument("--no-wide", action="store_true", help="leave out the wider configuration")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "plan_memory.json"))
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)  # max_res wide precision file
    args = ap.parse_args()
    if args.child:
        max_res, wide, precision, out = args.child
        measure(int(max_res), wide == "wide", precision, Path(out))
        return

    from progressive.train import memory
    from progressive.train import precision as mp

    machine = describe()
    bf16 = "native" if mp.native_bf16("cpu") else "emulated (no avx512_bf16 or amx)"
    print(headline(machine, f"{machine['cores']} cores, 1 thread per child"), flush=True)
    print(f"cpu bf16: {bf16}; flags {sorted(mp.cpu_flags() & {'avx512_bf16', 'amx_bf16'})}")
    runs = [(r, False) for r in args.max_res] + ([] if args.no_wide else [(32, True)])
    rows, ok = [], True
    for max_res, wide in runs:
        cfg = config(max_res, wide)
        plan = stages(cfg)
        for precision in args.precision:
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                cmd = [sys.executable, __file__, "--child", str(max_res),
                       "wide" if wide else "rule", precision, f.name]
                proc = subprocess.run(cmd, capture_output=True, text=True,
                                      env={**os.environ, "OMP_NUM_THREADS": "1"})
                if proc.returncode:
                    sys.exit(f"child failed ({cmd}):\n{proc.stderr[-3000:]}")
                measured = json.loads(Path(f.name).read_text())
            estimates = memory.stage_peaks(cfg, plan, precision)
            for i, (res, batch, _) in enumerate(plan):
                est, got = estimates[i]["peak"], measured["peaks"][i]
                ratio = est / got
                ok &= BOUNDS[0] <= ratio <= BOUNDS[1]
                rows.append({
                    "config": ("wide " if wide else "rule ") + f"max-res {max_res}",
                    "fmap": f"{cfg.networks.fmap_base}/{cfg.networks.fmap_max}",
                    "latent": cfg.networks.latent,
                    "res": res, "batch": batch, "precision": LABELS[precision],
                    "estimate_bytes": est, "measured_bytes": got, "ratio": round(ratio, 3),
                    "last_stage": i == len(plan) - 1,
                    "rss_peak_delta_bytes": measured["rss_peak_delta"] if i == len(plan) - 1
                    else None,
                })
            last = rows[-1]
            print(f"  {last['config']:18s} {last['precision']:13s} done, "
                  f"ratio at {last['res']} px {last['ratio']:.3f}", flush=True)
    machine["load_avg_end"] = os.getloadavg()[0]
    mib = 2**20
    print("\nEach configuration's last stage (every stage's ratio is checked; JSON has all):")
    print("| config | fmap | latent | res | batch | precision | estimate MiB | measured MiB "
          "| ratio | peak RSS delta MiB |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        if r["last_stage"]:
            print(f"| {r['config']} | {r['fmap']} | {r['latent']} | {r['res']} | {r['batch']} | "
                  f"{r['precision']} | {r['estimate_bytes'] / mib:.1f} | "
                  f"{r['measured_bytes'] / mib:.1f} | {r['ratio']:.3f} | "
                  f"{r['rss_peak_delta_bytes'] / mib:.1f} |")
    worst = min(rows, key=lambda r: r["ratio"]), max(rows, key=lambda r: r["ratio"])
    print(f"\nall {len(rows)} stages: ratio {worst[0]['ratio']:.3f} ({worst[0]['config']}, "
          f"{worst[0]['res']} px, {worst[0]['precision']}) to {worst[1]['ratio']:.3f} "
          f"({worst[1]['config']}, {worst[1]['res']} px, {worst[1]['precision']}); "
          f"bounds {BOUNDS[0]}..{BOUNDS[1]}: {'PASS' if ok else 'FAIL'}")
    print(load_line(machine))
    path = write_report(args.out, {"machine": machine, "cpu_bf16": bf16, "bounds": BOUNDS,
                                   "measured": "peak Total Allocated of the CPU allocator "
                                   "(torch profiler memory events) within each stage's steps",
                                   "rows": rows, "pass": ok})
    print(f"wrote {path}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
