"""Snapshots are finite and whole, a run folder has one writer, divergence stops cleanly."""

import json
import math

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from tiny import TINY_NETWORKS, cli_args, config, networks_of

from progressive.cli.main import main
from progressive.config.sections import every_res
from progressive.core.errors import UserError
from progressive.run import checkpoint as ckpt
from progressive.run import loading
from progressive.run.lock import RunLock
from progressive.train.loop import resolve_run, train

TINY = dict(**TINY_NETWORKS, max_res=8, batch=4, fade_kimg=0.016, stable_kimg=0.016, workers=0,
            snapshot_kimg=1.0, tick_kimg=0.016)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from datasets_prep import make_source, write_dataset

    path = tmp_path_factory.mktemp("data") / "synthetic"
    write_dataset(make_source("synthetic", "24"), path, 8, workers=0, progress=False)
    return path


@pytest.fixture(scope="module")
def run_dir(dataset, tmp_path_factory):
    """A finished tiny run: snapshots at 0, 16 (end of 4x4) and 48 (the end)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    train(config("demo", **TINY, data=str(dataset)), out, progress=False)
    return out


def _one_line_error(result, *words):
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def _poison(snapshot, name="generator"):
    """Write a NaN into one weight file of a snapshot, as a diverged run of an earlier release
    saved it (without file checksums in state.json)."""
    tensors = load_file(snapshot / f"{name}.safetensors")
    key = next(iter(tensors))
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = math.nan
    save_file(tensors, snapshot / f"{name}.safetensors")
    state = json.loads((snapshot / "state.json").read_text())
    del state["files"]
    (snapshot / "state.json").write_text(json.dumps(state))
    return key


def test_nonfinite_snapshot_is_refused_and_nothing_written(tmp_path):
    cfg = config("demo", **TINY)
    nets = networks_of(cfg)
    opts = {n: torch.optim.Adam(nets[n].parameters()) for n in ("generator", "energy")}
    with torch.no_grad():
        next(nets["energy"].parameters()).view(-1)[3] = math.inf
    with pytest.raises(ckpt.NonFiniteError, match="energy"):
        ckpt.save_snapshot(tmp_path / "run", 8, cfg, nets, opts)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_divergence_stops_naming_the_last_good_snapshot(dataset, tmp_path):
    args = ["train", *cli_args(data=dataset, outdir=tmp_path, name="lr", lr=1e6, **TINY_NETWORKS,
                               max_res=8, batch=4, fade_kimg=0.016, stable_kimg=0.016,
                               workers=0)]
    result = CliRunner().invoke(main, args)
    line = _one_line_error(result, "diverged", "snapshot-000000000", "--resume")
    assert "lower --lr" in line
    for snapshot in ckpt.list_snapshots(tmp_path / "lr"):  # whatever was saved is finite
        loading.check_snapshot(snapshot)


def test_resume_auto_skips_a_nonfinite_snapshot_and_use_commands_refuse_it(run_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    newest = ckpt.list_snapshots(run)[-1]
    key = _poison(newest)
    notices = []
    cfg = config("demo", **TINY)
    _, _, snapshot = resolve_run(cfg, {}, tmp_path, "run", "auto", notify=notices.append)
    assert snapshot == ckpt.list_snapshots(run)[-2]
    assert len(notices) == 1 and newest.name in notices[0] and key in notices[0]
    result = CliRunner().invoke(main, ["sample", "--ckpt", str(run), "--out",
                                       str(tmp_path / "s.png"), "--n", "4"])
    _one_line_error(result, "generator.safetensors", "non-finite", key)
    assert not (tmp_path / "s.png").exists()
    with pytest.raises(UserError, match="non-finite"):
        resolve_run(cfg, {}, tmp_path, "x", str(newest))


def test_a_loss_or_rate_override_on_resume_keeps_the_runs_other_settings(dataset, tmp_path):
    weights = {"latent_nll": 0.5, "marginal_kl": 0.0}
    cfg = config("demo", **TINY, data=str(dataset), total_kimg=0.016, loss=weights, lr=1e-3)
    train(cfg, tmp_path / "run", progress=False)
    over = {"loss.rec_scaling": "sum", "schedule.total_kimg": 0.032,
            "optim.lr_generator": every_res(4e-3)}
    resumed, _, snapshot = resolve_run(cfg, over, tmp_path, "run", "auto")
    assert snapshot is not None
    assert resumed.loss.rec_scaling == "sum"
    assert resumed.loss.latent_nll == 0.5 and resumed.loss.marginal_kl == 0.0
    # One network's learning rate changed; the others stay the run's, not the preset's 2e-3.
    assert set(resumed.optim.lr_generator.values()) == {4e-3}
    for table in (resumed.optim.lr_energy, resumed.optim.lr_inference):
        assert set(table.values()) == {1e-3}


def test_resume_from_a_snapshot_under_a_new_name_branches_and_leaves_the_source(
    dataset, run_dir, tmp_path
):
    source = sorted(p.name for p in run_dir.iterdir())
    middle = ckpt.list_snapshots(run_dir)[1]  # the end of 4x4, 16 images
    cfg = config("demo", **TINY, data=str(dataset))
    over = {"loss.rec_scaling": "sum"}
    branched, branch_dir, snapshot = resolve_run(cfg, over, tmp_path, "branch", str(middle))
    assert branch_dir == tmp_path / "branch" and snapshot == branch_dir / middle.name
    assert [p.name for p in ckpt.list_snapshots(branch_dir)] == [middle.name]
    stats = [json.loads(line) for line in (branch_dir / "stats.jsonl").read_text().splitlines()]
    assert stats and max(s["images_shown"] for s in stats) <= 16
    assert (branch_dir / "config.json").is_file() and not (branch_dir / "lock").exists()
    train(branched, branch_dir, snapshot, progress=False)
    assert ckpt.list_snapshots(branch_dir)[-1].name == ckpt.list_snapshots(run_dir)[-1].name
    assert branched.loss.rec_scaling == "sum"
    assert sorted(p.name for p in run_dir.iterdir()) == source  # the source is untouched
    with pytest.raises(UserError, match="already has snapshots"):
        resolve_run(cfg, over, tmp_path, "branch", str(middle))
    # a snapshot folder renamed by hand branches too, named by its images shown again
    import shutil

    shutil.copytree(middle, tmp_path / "kept-by-hand")
    _, _, snapshot = resolve_run(cfg, {}, tmp_path, "again", str(tmp_path / "kept-by-hand"))
    assert snapshot == tmp_path / "again" / middle.name


def test_damaged_snapshot_parts_name_the_file_and_the_cause(run_dir, tmp_path):
    import shutil

    snap = tmp_path / "snap"
    shutil.copytree(ckpt.list_snapshots(run_dir)[-1], snap)
    (snap / "optimizers.pt").write_bytes(b"PK\x03\x04 not a zip at all")
    with pytest.raises(UserError, match="optimizers.pt is damaged"):  # its recorded checksum
        loading.check_snapshot(snap)
    state = json.loads((snap / "state.json").read_text())
    del state["files"]  # as snapshots of earlier releases: the file's own parser must catch it
    (snap / "state.json").write_text(json.dumps(state))
    with pytest.raises(UserError) as e:
        loading.check_snapshot(snap)
    msg = str(e.value)
    assert "optimizers.pt" in msg and "Error: " in msg and "\n" not in msg
    assert msg.split("(", 1)[1].split(":", 1)[1].strip()  # the cause's first line, not just a type
    shutil.copytree(ckpt.list_snapshots(run_dir)[-1], snap, dirs_exist_ok=True)
    (snap / "state.json").write_text(json.dumps(state))
    tensors = load_file(snap / "generator.safetensors")
    key = sorted(k for k in tensors if tensors[k].dim() == 4)[0]
    tensors[key] = torch.zeros(*[d + 1 for d in tensors[key].shape])
    save_file(tensors, snap / "generator.safetensors")
    cfg = loading.read_state(snap)["config"]
    with pytest.raises(UserError) as e:
        loading.load_weights(snap, networks_of(cfg))
    msg = str(e.value)
    assert "generator.safetensors" in msg and key in msg and "shape" in msg and "\n" not in msg


def test_one_writer_per_run_folder(dataset, tmp_path):
    lock = RunLock.acquire(tmp_path / "busy")
    try:
        with pytest.raises(UserError) as e:
            RunLock.acquire(tmp_path / "busy")
        import os

        assert f"pid {os.getpid()}" in str(e.value) and "in use" in str(e.value)
        with pytest.raises(UserError, match="in use by pid"):
            train(config("demo", **TINY, data=str(dataset)), tmp_path / "busy",
                  progress=False)
        assert not ckpt.list_snapshots(tmp_path / "busy")  # the refused run wrote nothing
    finally:
        lock.release()
    RunLock.acquire(tmp_path / "busy").release()  # free again once released


def test_leftovers_of_killed_writers_are_cleaned(run_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    snaps = ckpt.list_snapshots(run)
    (run / ".snapshot-000000032.tmp-12345").mkdir()  # killed while writing
    (run / ".snapshot-000000032.tmp-12345" / "generator.safetensors").write_bytes(b"half")
    aside = run / f".{snaps[-1].name}.replaced-999"  # killed between the two renames
    snaps[-1].rename(aside)
    (run / ".samples-0008px-000000048.tmp-77.png").write_bytes(b"half a grid")
    done = ckpt.clean_run_dir(run)
    assert sorted(done) == ["removed .samples-0008px-000000048.tmp-77.png",
                            "removed .snapshot-000000032.tmp-12345",
                            f"restored {snaps[-1].name}"]
    assert ckpt.list_snapshots(run) == snaps
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
    loading.check_snapshot(snaps[-1])


def test_republishing_a_point_never_leaves_it_half_deleted(tmp_path, monkeypatch):
    cfg = config("demo", **TINY)
    nets = networks_of(cfg)
    opts = {"generator": torch.optim.Adam(nets["generator"].parameters())}
    first = ckpt.save_snapshot(tmp_path, 16, cfg, nets, opts)
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    with torch.no_grad():
        next(nets["generator"].parameters()).add_(1.0)
    import os

    real_replace = os.replace

    def crash_on_publish(src, dst):  # a kill right after the old snapshot stepped aside
        if str(src).endswith(f"tmp-{os.getpid()}"):
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", crash_on_publish)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_snapshot(tmp_path, 16, cfg, nets, opts)
    monkeypatch.undo()
    ckpt.clean_run_dir(tmp_path)
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before  # the old one, whole
    second = ckpt.save_snapshot(tmp_path, 16, cfg, nets, opts)
    assert (second / "generator.safetensors").read_bytes() != before["generator.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == [second.name]


def test_state_records_a_finite_snapshot(run_dir):
    state = json.loads((ckpt.list_snapshots(run_dir)[-1] / "state.json").read_text())
    assert state["images_shown"] == 48
    for snapshot in ckpt.list_snapshots(run_dir):
        loading.check_snapshot(snapshot)


def test_a_flipped_bit_in_a_weight_file_is_caught_by_its_checksum(run_dir, tmp_path):
    import shutil

    snap = tmp_path / "snap"
    shutil.copytree(ckpt.list_snapshots(run_dir)[-1], snap)
    data = bytearray((snap / "energy.safetensors").read_bytes())
    data[-3] ^= 0x04  # inside the last tensor: still a valid file, silently wrong weights
    (snap / "energy.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError) as e:
        loading.check_snapshot(snap)
    assert "energy.safetensors is damaged" in str(e.value) and "\n" not in str(e.value)
    result = CliRunner().invoke(main, ["energy", "--ckpt", str(snap), "--data",
                                       str(run_dir), "--out", str(tmp_path / "e.csv")])
    _one_line_error(result, "energy.safetensors is damaged")


def test_every_step_is_checked_at_once_on_cpu_and_by_the_next_tick_on_gpus():
    from progressive.train.monitor import FiniteSteps

    good = {"loss_energy": torch.tensor(1.0), "grad_norm_generator": torch.tensor(3.0)}
    bad_grad = {"loss_energy": torch.tensor(1.0), "grad_norm_generator": torch.tensor(math.inf)}
    bad_loss = {"loss_energy": torch.tensor(math.nan), "grad_norm_generator": torch.tensor(1.0)}
    cpu = FiniteSteps(torch.device("cpu"), "no")
    assert cpu.add(good, 0) is None and cpu.add(bad_grad, 4) == "at 4 images"
    # A GPU's verdicts stay on the device (no wait per step) until the tick reads them.
    gpu = FiniteSteps(torch.device("cuda"), "no")
    assert gpu.add(good, 0) is None and gpu.add(bad_loss, 4) is None and gpu.add(good, 8) is None
    assert gpu.confirm(12) == "between 0 and 12 images"
    assert gpu.add(good, 12) is None and gpu.confirm(16) is None
    # Under fp16 the loss scaler skips overflowing steps by design: only losses count.
    fp16 = FiniteSteps(torch.device("cpu"), "fp16")
    assert fp16.add(bad_grad, 0) is None and fp16.add(bad_loss, 4) == "at 4 images"


def test_a_loader_process_killed_by_a_signal_is_one_line(tmp_path):
    import os
    import signal

    from torch.utils.data import DataLoader, Dataset

    from progressive.train.loop import _next_batch

    class Crashing(Dataset):  # what a decoder crashing on a damaged image does to a worker
        def __len__(self):
            return 4

        def __getitem__(self, i):
            os.kill(os.getpid(), signal.SIGSEGV)

    loader = DataLoader(Crashing(), batch_size=2, num_workers=1,
                        multiprocessing_context="fork")
    with pytest.raises(UserError) as e:
        _next_batch(iter(loader), "data/faces")
    msg = str(e.value)
    assert "data loader process died reading data/faces" in msg and "--verify" in msg
    assert "\n" not in msg


def test_a_forked_child_does_not_keep_the_run_locked(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    code = (
        "import os, sys, time\n"
        "from progressive.run.lock import RunLock\n"
        f"RunLock.acquire({str(tmp_path / 'run')!r})\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        # fork's hooks have run once the child executes code: the lock is closed by then
        f"    open({str(tmp_path / 'started')!r}, 'w').close()\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        f"while not os.path.exists({str(tmp_path / 'started')!r}):\n"
        "    time.sleep(0.01)\n"
        f"open({str(tmp_path / 'child')!r}, 'w').write(str(pid))\n"
        "os._exit(0)\n"  # the holder dies; its forked child lives on
    )
    subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, check=True)
    child = int((tmp_path / "child").read_text())
    try:
        RunLock.acquire(tmp_path / "run").release()
    finally:
        os.kill(child, signal.SIGKILL)
