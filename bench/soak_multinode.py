"""Two machines, simulated on the loopback address: train, lose one, resume bit-exactly.

    OMP_NUM_THREADS=1 python bench/soak_multinode.py [--json results.json]

Two `accelerate launch` commands with `--num_machines 2`, machine ranks 0 and 1, one gloo
process each, meeting at 127.0.0.1. First an uninterrupted run; then the same run, in which
machine 1's launcher is killed with SIGKILL once the first periodic snapshot is published:
every process of both machines must stop within seconds. Both are launched again with
`--resume auto`, and the final snapshot must equal the uninterrupted run's, bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from machine import describe  # noqa: E402
from soak import alive, soak_arguments  # noqa: E402
from soak_resume import final_tensors, identical  # noqa: E402

RUN = ["--latent", "8", "--fmap-base", "64", "--fmap-max", "16", "--max-res", "8", "--batch",
       "8", "--fade-kimg", "0.4", "--stable-kimg", "0.4", "--snapshot-kimg", "0.2",
       "--workers", "1", "--seed", "5"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", ACCELERATE_USE_CPU="1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(machine: int, port: int, data: Path, out: Path, name: str, log: Path,
           *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
           "--num_machines", "2", "--machine_rank", str(machine), "--num_processes", "2",
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
           "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "progressive", "train", "--data", str(data), "--outdir", str(out), "--name", name,
           *RUN, *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)




def descendants(pid: int) -> list[int]:
    """Processes started by `pid`, and theirs (the launcher starts its ranks in new sessions,
    so process groups do not find them)."""
    parents = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                parents[int(p)] = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    out, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == parent]
        out += kids
        frontier += kids
    return out


def both(data: Path, out: Path, name: str, tag: str, *extra: str) -> list[subprocess.Popen]:
    port = free_port()
    return [launch(m, port, data, out, name, out / f"{tag}-machine{m}.log", *extra)
            for m in (0, 1)]


def main() -> None:
    args, out, _, _ = soak_arguments(__doc__, "multinode", trials=None)
    data = out / "data"
    if not (data / "meta.json").exists():
        subprocess.run([sys.executable, "tools/make_lmdb.py", "synthetic", "64", str(data),
                        "--max-res", "8", "--workers", "0"], cwd=ROOT, env=ENV, check=True,
                       capture_output=True)
    result: dict = {"machine": describe()}

    t = time.perf_counter()
    procs = both(data, out, "reference", "reference")
    codes = [p.wait(timeout=900) for p in procs]
    result["reference_s"] = round(time.perf_counter() - t, 1)
    result["reference_exit"] = codes
    assert codes == [0, 0], (out / "reference-machine0.log").read_text()[-2000:]
    reference = final_tensors(out / "reference")
    print(f"uninterrupted two-machine run: {result['reference_s']} s, exit codes {codes}",
          flush=True)

    run = out / "interrupted"
    procs = both(data, out, "interrupted", "first")
    while not (run / "snapshot-000000200").exists():
        assert all(p.poll() is None for p in procs), "a machine ended before the snapshot"
        time.sleep(0.05)
    members = {m: [p.pid, *descendants(p.pid)] for m, p in enumerate(procs)}
    everyone = [pid for pids in members.values() for pid in pids]
    # The ranks are the launchers' children; their own children are DataLoader workers.
    ranks = [pid for m, p in enumerate(procs) for pid in members[m][1:]
             if int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1]) == p.pid]
    os.kill(procs[1].pid, signal.SIGKILL)  # machine 1's launcher
    killed = time.perf_counter()
    stopped_at: dict[int, float] = {}
    while len(stopped_at) < len(everyone) and time.perf_counter() - killed < 120:
        for pid in everyone:
            if pid not in stopped_at and not alive(pid):
                stopped_at[pid] = time.perf_counter() - killed
        time.sleep(0.05)
    stopped_s = time.perf_counter() - killed
    result["ranks_stopped_after_s"] = sorted(round(stopped_at.get(pid, -1), 2) for pid in ranks)
    result["launcher0_stopped_after_s"] = round(stopped_at.get(procs[0].pid, -1), 2)
    result["loader_workers_stopped_after_s"] = sorted(
        round(t, 2) for pid, t in stopped_at.items() if pid not in ranks and
        pid not in (procs[0].pid, procs[1].pid))
    left = {m: [pid for pid in pids if alive(pid)] for m, pids in members.items()}
    for p in procs:
        p.wait()
    for pid in (pid for pids in left.values() for pid in pids):
        os.kill(pid, signal.SIGKILL)
    snaps = sorted(p.name for p in run.glob("snapshot-*"))
    result.update(processes_before_kill={m: len(v) for m, v in members.items()},
                  all_stopped_after_s=round(stopped_s, 2),
                  still_running=sum(len(v) for v in left.values()),
                  snapshots_after_kill=snaps,
                  stop_messages=[line for m in (0, 1) for line in
                                 (out / f"first-machine{m}.log").read_text().splitlines()
                                 if line.startswith("Error:")])
    print(f"killed machine 1's launcher; the ranks stopped after "
          f"{', '.join(f'{t:.1f}' for t in result['ranks_stopped_after_s'])} s, their loader "
          f"workers after {', '.join(f'{t:.1f}' for t in result['loader_workers_stopped_after_s'])}"
          f" s, machine 0's launcher after {result['launcher0_stopped_after_s']:.1f} s; every "
          f"process after {stopped_s:.1f} s; snapshots: {', '.join(snaps)}", flush=True)
    for line in result["stop_messages"]:
        print(f"  {line[:200]}")

    t = time.perf_counter()
    procs = both(data, out, "interrupted", "resume", "--resume", "auto")
    codes = [p.wait(timeout=900) for p in procs]
    result["resume_exit"] = codes
    result["resume_s"] = round(time.perf_counter() - t, 1)
    same = codes == [0, 0] and identical(final_tensors(run), reference)
    result["bit_identical"] = same
    print(f"resumed on both machines (exit codes {codes}, {result['resume_s']} s): final "
          f"snapshot bit-identical to the uninterrupted run: {same}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
