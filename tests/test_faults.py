"""Faults a long run meets: a full disk, a scheduler's SIGTERM, snapshots piling up, a
dataset of another resolution on resume."""

import errno

import pytest
import torch
from tiny import TINY_NETWORKS, config, networks_of, write_synthetic

from progressive.config.sections import Config
from progressive.core.errors import UserError
from progressive.run import checkpoint as ckpt
from progressive.run import loading


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("data") / "synthetic", 24, 8)


def _networks_and_optimizers(cfg: Config):
    nets = networks_of(cfg)
    opts = {n: torch.optim.Adam(nets[n].parameters()) for n in ("generator", "energy",
                                                                 "inference")}
    return nets, opts


def test_a_full_disk_during_a_snapshot_is_one_line_and_leaves_the_last_one(tmp_path,
                                                                           monkeypatch):
    cfg = config("demo", **TINY_NETWORKS, max_res=8)
    nets, opts = _networks_and_optimizers(cfg)
    first = ckpt.save_snapshot(tmp_path, 8, cfg, nets, opts)
    real_save = ckpt.save_file

    def fills_the_disk(tensors, path):
        if "energy" in str(path):
            path.write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(tensors, path)

    monkeypatch.setattr(ckpt, "save_file", fills_the_disk)
    with pytest.raises(UserError) as caught:
        ckpt.save_snapshot(tmp_path, 16, cfg, nets, opts)
    message = str(caught.value)
    assert str(tmp_path) in message and "MiB" in message and "\n" not in message
    assert "--resume auto" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # nothing partial
    loading.check_snapshot(first)


def test_other_write_errors_still_leave_nothing_partial(tmp_path, monkeypatch):
    cfg = config("demo", **TINY_NETWORKS, max_res=8)
    nets, opts = _networks_and_optimizers(cfg)

    def broken(tensors, path):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(ckpt, "save_file", broken)
    with pytest.raises(OSError):
        ckpt.save_snapshot(tmp_path, 16, cfg, nets, opts)
    assert list(tmp_path.iterdir()) == []


def _shown(run_dir) -> list[int]:
    return [loading.read_state(p)["images_shown"] for p in ckpt.list_snapshots(run_dir)]


def test_old_snapshots_go_but_the_start_stage_ends_and_the_resumed_one_stay(dataset, tmp_path):
    from progressive.train.loop import resolve_run, train

    # Stages: 4 px to 8 images, 8 px to 24; a snapshot after every step of 4 images.
    over = dict(**TINY_NETWORKS, data=str(dataset), max_res=8, batch=4, fade_kimg=0.008,
                stable_kimg=0.008, snapshot_kimg=0.004, tick_kimg=0.004, grid_size=2,
                workers=0, eval_images=0, keep_snapshots=1)
    train(config("demo", **over, total_kimg=0.016), tmp_path / "run", progress=False)
    assert _shown(tmp_path / "run") == [0, 8, 16]
    cfg, run_dir, snapshot = resolve_run(config("demo", **over), {"schedule.total_kimg": 0.024},
                                         tmp_path, "run", "auto")
    assert snapshot.name == "snapshot-000000016"
    train(cfg, run_dir, snapshot, progress=False)
    assert _shown(run_dir) == [0, 8, 16, 24]  # 20 went; 16, resumed from, stays
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".snapshot")]


def test_keep_snapshots_0_keeps_every_one(tmp_path):
    cfg = config("demo", **TINY_NETWORKS, max_res=8, keep_snapshots=0)
    nets, opts = _networks_and_optimizers(cfg)
    for shown in (0, 4, 8, 12, 16):
        ckpt.save_snapshot(tmp_path, shown, cfg, nets, opts)
    assert ckpt.prune_snapshots(tmp_path, 0, ckpt.stage_boundaries(cfg)) == []
    assert _shown(tmp_path) == [0, 4, 8, 12, 16]
    assert ckpt.prune_snapshots(tmp_path, 2, [0]) == ["snapshot-000000004",
                                                      "snapshot-000000008"]


def test_keep_snapshots_is_an_option():
    from click.testing import CliRunner

    from progressive.cli.main import main

    result = CliRunner().invoke(main, ["train", "--dry-run", "--set", "run.keep_snapshots=7",
                                       "--calibration-seconds", "0"])
    assert result.exit_code == 0, result.output
    assert '"keep_snapshots": 7' in result.output
    with pytest.raises(UserError, match="run.keep_snapshots"):
        config("demo", keep_snapshots=-1)


def test_sigterm_takes_a_snapshot_and_says_how_to_resume(dataset, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tiny import cli_args

    cmd = [sys.executable, "-m", "progressive", "train",
           *cli_args(data=dataset, outdir=tmp_path, name="run", max_res=8, batch=4, fade_kimg=50,
                     stable_kimg=50, snapshot_kimg=50, workers=0, **TINY_NETWORKS)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "stats.jsonl").exists():  # some steps taken
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, err[-2000:]
    assert "Traceback" not in err
    line = [x for x in err.splitlines() if "SIGTERM" in x]
    assert len(line) == 1 and "--resume auto" in line[0], err[-2000:]
    newest = ckpt.list_snapshots(tmp_path / "run")[-1]
    assert loading.read_state(newest)["images_shown"] > 0 and str(newest) in line[0]
    loading.check_snapshot(newest)


def test_resuming_on_a_dataset_of_higher_max_res_keeps_the_runs_or_names_it(dataset, tmp_path):
    from click.testing import CliRunner

    from progressive.cli.main import main
    from progressive.train.loop import train

    cfg = config("demo", **TINY_NETWORKS, data=str(dataset), max_res=8, batch=4,
                 fade_kimg=0.008, stable_kimg=0.008, total_kimg=0.008, workers=0,
                 eval_images=0)
    train(cfg, tmp_path / "run", progress=False)
    larger = write_synthetic(tmp_path / "larger", 24, 16)
    base = ["train", "--data", str(larger), "--outdir", str(tmp_path), "--name", "run",
            "--resume", "auto"]
    result = CliRunner().invoke(main, [*base, "--max-res", "16"])
    assert result.exit_code == 1
    assert "--max-res 16 differs from 8" in result.output and "another run" not in result.output
    result = CliRunner().invoke(main, [*base, "--total-kimg", "0.012"])
    assert result.exit_code == 0, result.output  # the run's 8 px, from the larger dataset
    assert loading.read_state(ckpt.list_snapshots(tmp_path / "run")[-1])["images_shown"] == 12


def test_a_changed_shape_field_without_an_option_is_named_with_its_set_form():
    from progressive.config.presets import check_same_networks

    saved = config("demo", **TINY_NETWORKS, max_res=8)
    changed = config("demo", **TINY_NETWORKS, max_res=8, energy_width=2)
    check_same_networks(saved, saved, "run/snapshot-000000008")  # the same shapes pass
    with pytest.raises(UserError) as caught:
        check_same_networks(saved, changed, "run/snapshot-000000008")
    message = str(caught.value)
    assert message.startswith("networks.energy_width 2 differs from 1, which the run of "
                              "run/snapshot-000000008")
    assert "--set networks.energy_width=1" in message and "\n" not in message
