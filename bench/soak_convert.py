"""Kill -9 a dataset conversion at random points: no half dataset is ever accepted.

    OMP_NUM_THREADS=1 python bench/soak_convert.py [--trials 20] [--json results.json]

Each trial converts the same synthetic source (1,500 images, max-res 32, PNG, 4 shards, two
worker processes) and kills it with SIGKILL at a random moment: the parent alone in odd
trials (its workers must notice and stop), the whole process group in even ones. Then the
reader is asked to open what is there: a half dataset must be refused; whatever it accepts
must verify record by record and equal the uninterrupted conversion. Finally the conversion
is re-run with --overwrite and must give byte-identical records.
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

import lmdb

ROOT = Path(__file__).resolve().parent.parent

from machine import describe  # noqa: E402
from soak import alive, soak_arguments  # noqa: E402

from progressive.core.errors import UserError  # noqa: E402
from progressive.data.reader import ImageDataset, verify_dataset  # noqa: E402

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def convert(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "tools/make_lmdb.py", "synthetic", "1500", str(out), "--max-res", "32",
         "--encoding", "png", "--shard-size", "400", "--workers", "2", *extra],
        cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )


def records(root: Path) -> dict[bytes, bytes]:
    # The reader keeps its shards open, and LMDB opens an environment once per process.
    from progressive.data import reader

    for _, _, env in reader._ENVS.values():
        env.close()
    reader._ENVS.clear()
    out = {}
    for shard in sorted(root.glob("shard-*.lmdb")):
        with lmdb.open(str(shard), readonly=True, lock=False) as env, env.begin() as txn:
            out.update((bytes(k), bytes(v)) for k, v in txn.cursor())
    return out




def main() -> None:
    args, out, rng, start = soak_arguments(__doc__, "convert")

    ref_dir = out / "reference"
    shutil.rmtree(ref_dir, ignore_errors=True)
    t0 = time.perf_counter()
    ref = convert(ref_dir)
    _, err = ref.communicate()
    assert ref.returncode == 0, err
    duration = time.perf_counter() - t0
    reference = records(ref_dir)
    print(f"uninterrupted conversion: {duration:.1f} s, {len(reference)} records", flush=True)

    trials = []
    for t in range(args.trials):
        target = out / f"trial{t:02d}"
        shutil.rmtree(target, ignore_errors=True)
        proc = convert(target)
        time.sleep(rng.uniform(0.0, 1.1) * duration)
        group = t % 2 == 0
        finished = proc.poll() is not None
        workers = [int(p) for p in os.listdir("/proc") if p.isdigit() and alive(int(p)) and
                   os.getpgid(int(p)) == proc.pid and int(p) != proc.pid] if not finished else []
        if not finished:
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        orphans = [w for w in workers if alive(w)]
        try:
            ImageDataset(target, 32)
            accepted = True
        except UserError as e:
            accepted, reason = False, str(e)
        whole = None
        if accepted:
            whole = (not verify_dataset(target, progress=False)["problems"]
                     and records(target) == reference)
        again = convert(target, "--overwrite")
        _, err = again.communicate()
        redone = again.returncode == 0 and records(target) == reference
        trial = {"trial": t, "killed": not finished, "killed_group": group and not finished,
                 "meta_written": (target / "meta.json").exists() if accepted else False,
                 "accepted": accepted, "accepted_and_whole": whole,
                 "refusal": "" if accepted else reason[:200], "orphan_workers": len(orphans),
                 "rerun_identical": redone}
        trials.append(trial)
        print(f"trial{t:02d} killed={not finished!s:5s} group={group!s:5s} accepted={accepted!s:5s}"
              f" whole={whole} orphans={len(orphans)} rerun-identical={redone} "
              f"{'' if accepted else reason[:90]}", flush=True)
        for w in orphans:
            os.kill(w, signal.SIGKILL)
        shutil.rmtree(target)
    half_accepted = sum(t["accepted"] and not t["accepted_and_whole"] for t in trials)
    summary = {
        "machine": describe(), "trials": len(trials),
        "killed": sum(t["killed"] for t in trials),
        "refused": sum(not t["accepted"] for t in trials),
        "accepted_whole": sum(bool(t["accepted_and_whole"]) for t in trials),
        "half_datasets_accepted": half_accepted,
        "orphan_workers": sum(t["orphan_workers"] for t in trials),
        "rerun_identical": sum(t["rerun_identical"] for t in trials),
        "seconds": round(time.perf_counter() - start, 1), "results": trials,
    }
    print(f"\n{summary['killed']} of {len(trials)} conversions killed; {summary['refused']} "
          f"refused, {summary['accepted_whole']} accepted (finished before the kill, verified "
          f"whole), {half_accepted} half datasets accepted; {summary['orphan_workers']} workers "
          f"outlived a kill; {summary['rerun_identical']}/{len(trials)} re-runs byte-identical")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
