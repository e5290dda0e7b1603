"""Kill -9 a training run at random points, resume it, and compare with an uninterrupted run.

    OMP_NUM_THREADS=1 python bench/soak_resume.py [--trials 20] [--json results.json]

A tiny 4 -> 16 run on a small synthetic dataset (480 images, snapshots every 48, so some
kills land while a snapshot is being written). Each trial starts the run, kills it with
SIGKILL (at a random moment between its first and its final snapshot, as timed on the
uninterrupted run, or the moment a temporary snapshot folder appears), continues it with
`--resume auto` to the end, and compares every tensor of the final snapshot (the four
networks and the optimizer states) with the uninterrupted run's: bit for bit. One process at
a time, one thread.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent

from machine import describe  # noqa: E402
from soak import soak_arguments  # noqa: E402

from progressive.config.schedule import Schedule  # noqa: E402

RUN = ["--latent", "8", "--fmap-base", "64", "--fmap-max", "16", "--mixed-precision", "no",
       "--max-res", "16", "--batch", "4", "--fade-kimg", "0.096", "--stable-kimg", "0.096",
       "--snapshot-kimg", "0.048", "--workers", "0", "--seed", "3"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def train(data: Path, out: Path, name: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "progressive", "train", "--data", str(data), "--outdir", str(out),
         "--name", name, *RUN, *extra],
        cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def final_tensors(run: Path) -> dict[str, torch.Tensor]:
    snap = sorted(run.glob("snapshot-*"))[-1]
    out = {}
    for f in sorted(snap.glob("*.safetensors")):
        out.update({f"{f.stem}/{k}": v for k, v in load_file(f).items()})
    opt = torch.load(snap / "optimizers.pt", weights_only=True)
    for net, state in opt.items():
        for idx, st in state["state"].items():
            for k, v in st.items():
                out[f"opt/{net}/{idx}/{k}"] = torch.as_tensor(v)
    out["images_shown"] = torch.tensor(json.loads((snap / "state.json").read_text())
                                       ["images_shown"])
    return out


def identical(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k])
        for k in a
    )


def main() -> None:
    args, out, rng, start = soak_arguments(__doc__, "resume")

    data = out / "data"
    if not (data / "meta.json").exists():
        subprocess.run([sys.executable, "tools/make_lmdb.py", "synthetic", "64", str(data),
                        "--max-res", "16", "--workers", "0"], cwd=ROOT, env=ENV, check=True,
                       capture_output=True)
    shutil.rmtree(out / "runs", ignore_errors=True)
    t0 = time.perf_counter()
    ref = train(data, out / "runs", "reference")
    ref_run = out / "runs" / "reference"
    t_first = t_last = None  # when the first and the final snapshot appeared
    while ref.poll() is None:
        if t_first is None and (ref_run / "snapshot-000000000").exists():
            t_first = time.perf_counter()
        if t_last is None and (ref_run / "snapshot-000000480").exists():
            t_last = time.perf_counter()
        time.sleep(0.01)
    _, err = ref.communicate()
    assert ref.returncode == 0, err
    duration = time.perf_counter() - t0
    training_s = t_last - t_first
    reference = final_tensors(out / "runs" / "reference")
    from progressive.config.presets import make_config

    cfg = make_config("demo", {"schedule.max_res": 16, "schedule.fade_kimg": 0.096,
                               "schedule.stable_kimg": 0.096})
    schedule = Schedule.from_config(cfg)
    assert schedule.end_of_last_stage == 480
    print(f"uninterrupted run: {duration:.1f} s ({training_s:.1f} s from the first snapshot to "
          f"the last), {schedule.end_of_last_stage} images, "
          f"{len(list((out / 'runs' / 'reference').glob('snapshot-*')))} snapshots", flush=True)

    trials = []
    for t in range(args.trials):
        name = f"trial{t:02d}"
        mode = "mid-snapshot" if t % 3 == 2 else "random time"
        proc = train(data, out / "runs", name)
        run = out / "runs" / name
        if mode == "random time":  # a random moment between the first and final snapshot
            while not (run / "snapshot-000000000").exists() and proc.poll() is None:
                time.sleep(0.01)
            deadline = time.perf_counter() + rng.uniform(0.0, 1.0) * training_s
            while time.perf_counter() < deadline and proc.poll() is None:
                time.sleep(0.01)
        else:  # the moment a snapshot is being written, after a random number of them
            skip = rng.randrange(1, 8)
            seen: set[str] = set()
            while proc.poll() is None:
                tmp = [p.name for p in run.glob(".snapshot-*.tmp-*")] if run.exists() else []
                seen.update(tmp)
                if tmp and len(seen) > skip:
                    break
                time.sleep(0.002)
        killed = proc.poll() is None
        tmp_at_kill = [p.name for p in run.glob(".snapshot-*.tmp-*")] if run.exists() else []
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        snaps = sorted(p.name for p in run.glob("snapshot-*"))
        newest = int(snaps[-1].split("-")[1]) if snaps else None
        resumed = train(data, out / "runs", name, "--resume", "auto")
        _, err = resumed.communicate()
        same = resumed.returncode == 0 and identical(final_tensors(run), reference)
        leftovers = [p.name for p in run.iterdir() if p.name.startswith(".snapshot-")]
        phase = schedule.at(newest) if newest is not None else None
        trial = {
            "trial": t, "mode": mode, "killed": killed, "tmp_at_kill": tmp_at_kill,
            "newest_snapshot_at_kill": newest,
            "resumed_in": None if phase is None else
            f"{phase.res}px {'fade-in' if phase.fading else 'stable'} alpha {phase.alpha:.3g}",
            "resume_rc": resumed.returncode, "bit_identical": same, "leftovers": leftovers,
            "error": "" if resumed.returncode == 0 else err.strip().splitlines()[-1][:200],
        }
        trials.append(trial)
        print(f"{name} {mode:12s} killed={killed!s:5s} during-write={bool(tmp_at_kill)!s:5s} "
              f"resumed from {newest} ({trial['resumed_in']}) -> identical={same} "
              f"leftovers={leftovers}", flush=True)
        shutil.rmtree(run)

    n_same = sum(t["bit_identical"] for t in trials)
    summary = {
        "machine": describe(), "trials": len(trials), "bit_identical": n_same,
        "killed": sum(t["killed"] for t in trials),
        "killed_during_snapshot_write": sum(bool(t["tmp_at_kill"]) for t in trials),
        "resumed_mid_fade": sum("fade-in" in (t["resumed_in"] or "") for t in trials),
        "seconds": round(time.perf_counter() - start, 1), "results": trials,
    }
    print(f"\n{n_same}/{len(trials)} bit-identical to the uninterrupted run; "
          f"{summary['killed']} killed, {summary['killed_during_snapshot_write']} during a "
          f"snapshot write, {summary['resumed_mid_fade']} resumed mid fade-in")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
