"""Does growing pay? The same networks trained to 64 px for the same wall time, twice: grown
4 -> 64 (the default rule's schedule, the last stage running on) and at 64 from the start.

    python bench/bench_growth.py --data data/celeba64 --minutes 12
    python bench/bench_growth.py --data data/celeba64 --minutes 8 --phase-kimg 2

Each run is `progressive train` in its own process with the default rule's sizes for
--max-res (the grown run's phases shortened with --phase-kimg for short budgets), stage-end
evaluations off (they would eat training time) and a snapshot every --snapshot-kimg; it is
stopped when its wall-clock budget is spent; with --parallel both train at the same time
(one thread each on a machine with two or more cores), otherwise one after the other. A
snapshot's wall time is its state.json's modification time minus the process start.
Afterwards every snapshot is
measured the same way: SWD (x1e3, progressive GAN's, every level) between the dataset's
held-out images (its last 10% by index, at most --n) and as many samples of the generator
average from fixed latents, at the final resolution; samples of a stage below it are
upsampled (nearest), which is what that model can show at that size. Reported: a table, JSON,
a PNG of SWD against wall time, and the ratio of the times both runs need to reach the direct
run's final SWD (Progressive GAN reports 2-6x for its own networks).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent

from machine import describe, headline, load_line, write_report  # noqa: E402

from progressive.data.reader import ImageDataset  # noqa: E402
from progressive.metrics import fidelity as metrics  # noqa: E402
from progressive.metrics.stage import split_counts  # noqa: E402
from progressive.run import folder as run_folder  # noqa: E402
from progressive.run import loading  # noqa: E402


def start_run(name: str, args: argparse.Namespace, extra: list[str]) -> subprocess.Popen:
    """Start one run's training process; its start time goes to `<runs>/<name>.start`."""
    run_dir = Path(args.runs) / name
    if run_dir.exists():
        sys.exit(f"{run_dir} exists; remove it or pass another --runs folder")
    cmd = [sys.executable, "-m", "progressive", "train", "--data", args.data,
           "--max-res", str(args.res), "--outdir", args.runs, "--name", name,
           "--total-kimg", "100000", "--snapshot-kimg", str(args.snapshot_kimg),
           "--set", "run.eval_images=0", *extra]
    log = open(run_dir.parent / f"{name}.log", "w")
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    log.close()  # the child keeps its own handle
    (Path(args.runs) / f"{name}.start").write_text(repr(start))
    return proc


def stop_at(proc: subprocess.Popen, deadline: float) -> None:
    """Let a run train until `deadline` (time.time()), then stop it."""
    try:
        proc.wait(timeout=max(0.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGINT: a background job's SIGINT may be ignored. A snapshot being
        # written stays a temporary folder, never a snapshot.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()


@torch.no_grad()
def measure(run_dir: Path, real: torch.Tensor, res: int, n: int, budget_s: float) -> list[dict]:
    """SWD at `res` of every snapshot written within the budget, with its wall time."""
    start = float((run_dir.parent / f"{run_dir.name}.start").read_text())
    rows, z = [], None
    for snap in run_folder.list_snapshots(run_dir):
        wall = (snap / run_folder.STATE_NAME).stat().st_mtime - start
        if wall > budget_s:
            continue  # written while the run was being stopped
        run = loading.load_run(snap, device="cpu")
        g = run.generator  # the generator average
        if z is None:  # the same latents for every snapshot of both runs
            z = torch.randn(n, g.latent, generator=torch.Generator().manual_seed(123))
        fake = torch.cat([g(z[i : i + 64], run.res, run.alpha) for i in range(0, n, 64)])
        if run.res < res:
            fake = F.interpolate(fake, size=(res, res), mode="nearest")
        swd = metrics.sliced_wasserstein(real, fake, seed=0)
        rows.append({"run": run_dir.name, "images_shown": run.images_shown, "res": run.res,
                     "alpha": run.alpha, "wall_s": wall, "swd": swd["mean"],
                     "swd_levels": swd["levels"], "swd_per_level": swd["swd"]})
        print(f"  {run_dir.name} {run.images_shown:>7} images {run.res:>3}px "
              f"{wall:7.1f} s  SWD {swd['mean']:.1f}", flush=True)
    return rows


def time_to_reach(rows: list[dict], target: float) -> float | None:
    """Wall time of the first snapshot at or below `target` SWD (the starting point apart)."""
    for r in rows:
        if r["images_shown"] > 0 and r["swd"] <= target:
            return r["wall_s"]
    return None


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, style in (("grown", "o-"), ("direct", "s-")):
        pts = [(r["wall_s"] / 60, r["swd"]) for r in rows if r["run"] == name]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, markersize=3, label=name)
    ax.set_xlabel("wall time, minutes")
    ax.set_ylabel("SWD x1e3 at the final resolution (held-out)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset (make_lmdb.py) with max_res >= --res")
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--minutes", type=float, default=12.0, help="wall-clock budget per run")
    ap.add_argument("--snapshot-kimg", type=float, default=2.0)
    ap.add_argument("--phase-kimg", type=float, default=None,
                    help="thousands of images per fade-in and per stable phase of the grown run "
                    "(default: the rule's); short budgets need short phases to reach --res")
    ap.add_argument("--n", type=int, default=500, help="held-out images (and samples) for SWD")
    ap.add_argument("--parallel", action="store_true",
                    help="train both runs at once (give each a thread: OMP_NUM_THREADS=1)")
    ap.add_argument("--runs", default=str(ROOT / "checkpoints" / "bench-growth"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "growth.json"))
    args = ap.parse_args()

    machine = describe()
    print(headline(machine), flush=True)
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    ds = ImageDataset(args.data, args.res)
    train_count, held = split_counts(len(ds), 0.1)
    n = min(args.n, held)
    real = ds.batch(list(range(train_count, train_count + n)))

    phases = []
    if args.phase_kimg is not None:
        phases = ["--fade-kimg", str(args.phase_kimg), "--stable-kimg", str(args.phase_kimg)]
    runs = {"grown": phases, "direct": ["--set", f"schedule.start_res={args.res}"]}
    if args.parallel:  # both at once, each on its own share of the cores
        procs = {name: start_run(name, args, extra) for name, extra in runs.items()}
        deadline = time.time() + args.minutes * 60
        for proc in procs.values():
            stop_at(proc, deadline)
    else:
        for name, extra in runs.items():
            stop_at(start_run(name, args, extra), time.time() + args.minutes * 60)
    rows = []
    for name in ("grown", "direct"):
        rows += measure(Path(args.runs) / name, real, args.res, n, args.minutes * 60)

    grown = [r for r in rows if r["run"] == "grown"]
    direct = [r for r in rows if r["run"] == "direct"]
    target = direct[-1]["swd"]
    t_grown, t_direct = time_to_reach(grown, target), time_to_reach(direct, target)
    ratio = t_direct / t_grown if t_grown and t_direct else None
    machine["load_avg_end"] = os.getloadavg()[0]

    print(f"\nSWD x1e3 at {args.res} px, {n} held-out images vs {n} samples; "
          f"{args.minutes:g} min per run")
    print("| run | wall (min) | images shown | res | SWD |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['run']} | {r['wall_s'] / 60:.1f} | {r['images_shown']:,} | {r['res']} "
              f"| {r['swd']:.1f} |")
    fmt = lambda t: "not reached" if t is None else f"{t / 60:.1f} min"  # noqa: E731
    print(f"direct run's final SWD {target:.1f}: direct reaches it at {fmt(t_direct)}, "
          f"grown at {fmt(t_grown)}"
          + (f"; growing is {ratio:.2f}x faster" if ratio else ""))
    print(load_line(machine))

    result = {"machine": machine, "args": vars(args), "rows": rows, "target_swd": target,
              "seconds_to_target": {"grown": t_grown, "direct": t_direct},
              "speedup": ratio}
    out = write_report(args.out, result)
    png = out.with_suffix(".png")
    plot(rows, png, f"grown 4->{args.res} vs {args.res} from the start, {args.minutes:g} min "
         f"each ({Path(args.data).name})")
    print(f"wrote {out} and {png}")


if __name__ == "__main__":
    main()
