"""Trackers through accelerate: a TensorBoard run's scalars, evaluations and grids, stats.jsonl
unchanged beside them, and a tracker that is not installed refused before training."""

import json

import pytest
from click.testing import CliRunner
from tiny import TINY_NETWORKS, config, write_synthetic

from progressive.cli.main import main
from progressive.core.errors import UserError
from progressive.train import tracking
from progressive.train.loop import train


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _tiny(data, **extra):
    return config("demo", **TINY_NETWORKS, data=str(data), max_res=8, batch=4,
                  fade_kimg=0.008, stable_kimg=0.008, workers=0, tick_kimg=0.008,
                  grid_size=2, **extra)


def _stats_keys(run_dir):
    lines = (run_dir / "stats.jsonl").read_text().splitlines()
    return [sorted(json.loads(line)) for line in lines]


def test_tensorboard_run_logs_scalars_evaluations_and_grids(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = write_synthetic(tmp_path / "data", 40, 8)
    train(_tiny(data), tmp_path / "plain", progress=False)
    train(_tiny(data, log_with="tensorboard"), tmp_path / "logged", progress=False)

    events = list((tmp_path / "logged").rglob("events.out.tfevents.*"))
    assert events and not list((tmp_path / "plain").rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars, images = set(acc.Tags()["scalars"]), set(acc.Tags()["images"])
    assert {"loss_energy", "alpha", "images_per_s", "lr/generator"} <= scalars
    assert any(t.startswith("eval/recon") for t in scalars)
    assert {"samples", "reconstructions"} <= images
    steps = [e.step for e in acc.Scalars("alpha")]
    stats = [json.loads(line) for line in (tmp_path / "logged" / "stats.jsonl").open()]
    assert steps == [s["images_shown"] for s in stats]  # one point per tick, at images shown
    assert [e.value for e in acc.Scalars("alpha")] == pytest.approx([s["alpha"] for s in stats])
    evaluations = [json.loads(line) for line in (tmp_path / "logged" /
                                                  "evaluations.jsonl").open()]
    assert [e.step for e in acc.Scalars("eval/recon")] == [e["images_shown"] for e in evaluations]
    assert len(acc.Images("samples")) == len(evaluations)  # the start and every stage end

    # stats.jsonl is the same with or without a tracker.
    assert _stats_keys(tmp_path / "logged") == _stats_keys(tmp_path / "plain")


def test_a_tracker_not_installed_is_one_line_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "available", lambda name: False)
    with pytest.raises(UserError, match=r"--log-with wandb: .* pip install wandb"):
        train(config("demo", **TINY_NETWORKS, log_with="wandb"), tmp_path / "run")
    assert not (tmp_path / "run").exists()

    result = CliRunner().invoke(main, ["train", "--log-with", "tensorboard", "--max-res", "8",
                                       "--outdir", str(tmp_path / "runs")])
    assert result.exit_code != 0
    assert "--log-with tensorboard" in result.output and "pip install tensorboard" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()


def test_log_with_is_a_choice_of_the_trackers(tmp_path):
    result = CliRunner().invoke(main, ["train", "--log-with", "mlflow", "--dry-run"])
    assert result.exit_code == 2 and "mlflow" in result.output


def test_flat_config_is_scalars_by_section_field():
    flat = tracking.flat_config(config("demo", **TINY_NETWORKS, log_with="tensorboard"))
    assert flat["run.log_with"] == "tensorboard" and flat["networks.latent"] == 8
    assert all(isinstance(v, bool | int | float | str) for v in flat.values())
