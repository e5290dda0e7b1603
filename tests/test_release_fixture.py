"""A run written by progressive 0.1.0 (tests/fixtures/run-0.1: max-res 8, snapshots every 200
images) still loads, samples, and resumes bit-exactly with this code."""

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from progressive.cli.main import main

FIXTURE = Path(__file__).parent / "fixtures" / "run-0.1"
DATA = "runs/_builtin/synthetic-8px-100"  # the fixture's dataset, relative to where it ran


@pytest.fixture()
def old_run(tmp_path, monkeypatch):
    """The fixture copied to tmp_path/runs/run-0.1 without its snapshots after 200 images,
    with its built-in dataset rendered where its configuration names it."""
    from progressive.train.data import render_builtin_dataset

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "run-0.1"
    shutil.copytree(FIXTURE, run)
    for later in ("snapshot-000000400", "snapshot-000000600"):
        shutil.rmtree(run / later)
    render_builtin_dataset(tmp_path / DATA, 8, 100)
    return run


def test_old_run_resumes_bit_exactly(old_run):
    """Continued from its snapshot at 200 images (through the stage change to 8 px), the run
    reaches the 0.1.0 snapshot at 400 images with every weight equal to the bit."""
    args = ["train", "--outdir", "runs", "--name", "run-0.1", "--resume", "auto",
            "--total-kimg", "0.4"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    ours, theirs = old_run / "snapshot-000000400", FIXTURE / "snapshot-000000400"
    files = sorted(p.name for p in theirs.glob("*.safetensors"))
    assert len(files) == 6
    for name in files:
        a, b = load_file(ours / name), load_file(theirs / name)
        assert a.keys() == b.keys(), name
        for key in a:
            assert a[key].dtype == b[key].dtype and (a[key] == b[key]).all(), f"{name} {key}"


def test_old_run_samples(tmp_path):
    out = tmp_path / "grid.png"
    args = ["sample", "--ckpt", str(FIXTURE), "--device", "cpu", "--n", "4", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "4 samples at 8px" in result.output and out.stat().st_size > 0
