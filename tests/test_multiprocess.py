"""Two gloo ranks on the CPU through `accelerate launch`: DDP, split data, one run folder."""

import json
import os
import subprocess
import sys

from tiny import TINY_NETWORKS, cli_args

from progressive import checkpoint as ckpt


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
        *cli_args(data=data, out=tmp_path, name="ddp", max_res=8, batch=4, fade_kimg=0.016,
                  stable_kimg=0.016, workers=1, **TINY_NETWORKS),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        done.stderr.count("training on 24 images") + done.stdout.count("training on 24 images") == 1
    )
    assert "2 process(es)" in done.stdout + done.stderr
    run = ckpt.load_run(tmp_path / "ddp")
    assert (run.res, run.alpha, run.images_shown) == (8, 1.0, 48)
    stats = [
        json.loads(line) for line in (tmp_path / "ddp" / "stats.jsonl").read_text().splitlines()
    ]
    assert stats[-1]["images_shown"] == 48 and stats[-1]["res"] == 8
