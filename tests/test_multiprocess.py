"""Two gloo ranks on the CPU through `accelerate launch`: DDP, split data, one run folder."""

import json
import os
import subprocess
import sys

from tiny import TINY_NETWORKS, cli_args

from progressive.run import checkpoint as ckpt
from progressive.run import loading


def test_two_processes_train_one_run(tmp_path):
    from datasets_prep import make_source, write_dataset

    data = tmp_path / "data"
    write_dataset(make_source("synthetic", "24"), data, 8, workers=0, progress=False)
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "progressive",
        "train",
        *cli_args(data=data, outdir=tmp_path, name="ddp", max_res=8, batch=4, fade_kimg=0.016,
                  stable_kimg=0.016, workers=1, **TINY_NETWORKS),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # One rank prints; 24 images, the last 2 (10%) held out for evaluation.
    assert (done.stderr + done.stdout).count("training on 22 of 24 images") == 1
    assert "2 process(es)" in done.stdout + done.stderr
    run = loading.load_run(tmp_path / "ddp")
    assert (run.res, run.alpha, run.images_shown) == (8, 1.0, 48)
    stats = [
        json.loads(line) for line in (tmp_path / "ddp" / "stats.jsonl").read_text().splitlines()
    ]
    assert stats[-1]["images_shown"] == 48 and stats[-1]["res"] == 8


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped has stopped)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _descendants(pid: int) -> list[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        frontier += kids
    return out


def test_ranks_stop_within_seconds_when_the_launcher_is_killed(tmp_path):
    import signal
    import time

    from datasets_prep import make_source, write_dataset
    from progressive.core.errors import UserError
    from progressive.run.lock import RunLock

    data = tmp_path / "data"
    write_dataset(make_source("synthetic", "24"), data, 8, workers=0, progress=False)
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
           "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "progressive", "train",
           *cli_args(data=data, outdir=tmp_path, name="long", max_res=8, batch=4, fade_kimg=50,
                     stable_kimg=50, workers=0, **TINY_NETWORKS)]
    launcher = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    ranks: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "long" / "snapshot-000000000").exists():
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        ranks = [p for p in _descendants(launcher.pid) if _alive(p)]
        assert len(ranks) >= 2
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        killed = time.monotonic()
        while any(_alive(p) for p in ranks) and time.monotonic() - killed < 30:
            time.sleep(0.2)
        assert not any(_alive(p) for p in ranks)
        assert time.monotonic() - killed < 10
    finally:
        for p in [*ranks, *_descendants(launcher.pid), launcher.pid]:  # after a failure
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    # The lock dies with its holder. A multi-threaded process's leader shows as a zombie
    # while its other threads still tear down (and hold its files), so allow a moment.
    freed = time.monotonic() + 5
    while True:
        try:
            RunLock.acquire(tmp_path / "long").release()
            break
        except UserError:
            assert time.monotonic() < freed
            time.sleep(0.1)
    for snapshot in ckpt.list_snapshots(tmp_path / "long"):
        loading.check_snapshot(snapshot)
