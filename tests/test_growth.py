"""Growth to high resolution: the default rule at every max-res, the width floor, a real
default 1024 run, the dry-run plan, mixed precision auto, hold-out, stage-end evaluations and
the progress plot."""

import json

import pytest
import torch
from click.testing import CliRunner
from tiny import TINY_NETWORKS, cli_args, config, networks_of

from progressive.cli.main import main
from progressive.config.sizing import FMAP_MIN
from progressive.metrics.stage import EVALUATIONS, read_evaluations, split_counts
from progressive.model.layers import EqualizedConv2d, EqualizedLinear
from progressive.train import precision
from progressive.train.loop import train

ALL_RES = [4 << i for i in range(9)]


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    # accelerate keeps one process-wide precision; runs here use "auto" (bf16 on some CPUs)
    # and others "no", which a fresh process each would give them.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from datasets_prep import make_source, write_dataset

    path = tmp_path_factory.mktemp("data") / "synthetic"
    write_dataset(make_source("synthetic", "40"), path, 16, workers=0, progress=False)
    return path


def _narrowest(cfg: dict) -> int:
    """The fewest channels of any layer of the three networks, RGB adapters and outputs apart."""
    with torch.device("meta"):
        nets = networks_of(cfg)
    widths = []
    for name in ("generator", "energy", "inference"):
        for path, m in nets[name].named_modules():
            if isinstance(m, EqualizedConv2d) and "rgb" not in path:
                widths += list(m.weight.shape[:2])
            elif isinstance(m, EqualizedLinear) and "dense1" not in path:
                widths.append(m.weight.shape[0])  # dense: latent in, features out
    return min(widths)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("max_res", ALL_RES)
def test_every_default_plan_keeps_every_layer_at_the_floor_or_wider(max_res, device):
    cfg = config(None, device=device, max_res=max_res)
    assert cfg.preset == "auto" and cfg.schedule.max_res == max_res
    assert cfg.networks.fmap_min == FMAP_MIN
    assert _narrowest(cfg) >= FMAP_MIN
    for r in (r for r in ALL_RES if r <= max_res):
        assert cfg.schedule.batch[r] >= 4 and cfg.optim.lr_generator[r] > 0


def test_demo_widths_at_1024_are_floored_and_celebahq_keeps_its_latent():
    # The demo's widths (512 / 64) would give 0 channels at 1024 without the floor.
    assert _narrowest(config("demo", max_res=1024)) == FMAP_MIN
    cfg = config("celebahq1024")
    assert cfg.networks.latent == 512 and _narrowest(cfg) == 16


def test_default_rule_depends_on_device_and_max_res():
    cpu32, cpu1024 = config(None, device="cpu"), config(None, device="cpu", max_res=1024)
    gpu = config(None, device="cuda", max_res=1024)
    demo = config("demo")
    for a, b in ((cpu32.networks, demo.networks), (cpu32.optim, demo.optim)):
        assert a == b  # at 32 px on a CPU the rule is the demo
    assert (cpu32.schedule.fade_kimg, cpu32.schedule.stable_kimg) == (6.0, 6.0)
    for r in (4, 8, 16, 32):
        assert cpu32.schedule.batch[r] == demo.schedule.batch[r]
    assert cpu1024.schedule.batch[1024] == 4 and cpu1024.networks.latent == 128
    # batch 8 on a CPU up to 128 px (more steps for the same images), 4 above
    assert [cpu1024.schedule.batch[r] for r in (4, 32, 128, 256)] == [8, 8, 8, 4]
    assert demo.schedule.batch[32] == 8
    assert gpu.networks.latent == 512 and gpu.networks.fmap_max == 512
    assert gpu.schedule.batch[4] == 128
    assert cpu1024.data.synthetic_count < cpu32.data.synthetic_count


def test_real_default_1024_run_on_cpu_trains_its_first_stage(tmp_path):
    # The rule's configuration for 1024 on a CPU, on the built-in data rendered at 1024 (only
    # fewer images, to keep the test quick), for two steps of the 4x4 stage.
    cfg = config(None, device="cpu", max_res=1024, synthetic_count=20, total_kimg=0.064,
                      eval_images=0)
    final = train(cfg, tmp_path / "run", progress=False)
    assert final.name == "snapshot-000000064"
    meta = json.loads((tmp_path / "_builtin" / "synthetic-1024px-20" / "meta.json").read_text())
    assert meta["encoding"]["1024"] == "jpeg" and meta["encoding"]["256"] == "raw"
    stats = [json.loads(s) for s in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert stats[-1]["res"] == 4 and stats[-1]["images_shown"] == 64
    assert all(torch.isfinite(torch.tensor(s["rec"])) for s in stats)
    assert stats[-1]["mixed_precision"] == precision.resolve("auto", "cpu")


def test_dry_run_plans_every_stage_with_time_memory_and_data_cost(tmp_path):
    result = CliRunner().invoke(main, ["train", "--max-res", "1024", "--dry-run",
                                       "--calibration-seconds", "0", "--outdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert [s["res"] for s in plan["stages"]] == ALL_RES
    assert plan["config"]["preset"] == "auto" and "fmap_base/res" in plan["rule"]
    assert plan["mixed_precision"].startswith(("bf16", "fp32"))
    ends = [s["images_shown"] for s in plan["stages"]]
    assert ends[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ends, ends[1:], strict=False))
    mem = [s["peak_memory_bytes_expected"] for s in plan["stages"]]
    assert mem == sorted(mem) and mem[0] > 0  # more pixels, more saved activations
    assert min(s["width"] for s in plan["stages"]) >= FMAP_MIN
    data = plan["builtin_data"]
    assert data["images"] == plan["config"]["data"]["synthetic_count"] and not data["exists"]
    assert 0 < data["disk_bytes_expected"] < 2e9 and data["seconds_expected"] > 0
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing


def test_loss_options_reach_the_plan_and_leave_the_other_weights(tmp_path):
    args = ["train", "--max-res", "16", "--dry-run", "--calibration-seconds", "0",
            "--outdir", str(tmp_path)]
    plans = []
    for extra in ([], ["--set", "loss.marginal_kl=0"],
                  ["--set", "loss.rec_scaling=sum", "--set", "loss.marginal_kl=0.5"],
                  ["--set", "loss.code_decorrelation=0"],
                  ["--set", "loss.latent_nll=1", "--set", "loss.energy_r1=0.05"]):
        result = CliRunner().invoke(main, args + extra)
        assert result.exit_code == 0, result.output
        plans.append(json.loads(result.output)["config"]["loss"])
    default, off, both, decorrelation_off, centred = plans
    assert default["latent_nll"] == 0.1 and centred["latent_nll"] == 1.0
    assert default["energy_r1"] == 0.0 and centred["energy_r1"] == 0.05
    assert default["code_decorrelation"] == 1.0 and decorrelation_off["code_decorrelation"] == 0.0
    assert decorrelation_off["marginal_kl"] == default["marginal_kl"]
    assert default["marginal_kl"] == 1.0 and off["marginal_kl"] == 0.0
    assert both["marginal_kl"] == 0.5 and both["rec_scaling"] == "sum"
    assert {k: v for k, v in off.items() if k != "marginal_kl"} == {
        k: v for k, v in default.items() if k != "marginal_kl"
    }


def test_dry_run_calibration_measures_the_first_stages(dataset, tmp_path):
    args = ["train", "--dry-run", "--calibration-seconds", "2",
            *cli_args(data=dataset, max_res=16, batch=4, **TINY_NETWORKS)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    stages = json.loads(result.output)["stages"]
    assert stages[0]["seconds_source"] == "calibration: measured"
    assert all(s["seconds_expected"] > 0 for s in stages)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--max-res", "12"], "--max-res 12: a power of two from 4 to 1024"),
        (["--max-res", "2048"], "--max-res 2048: a power of two from 4 to 1024"),
        (["--max-res", "2"], "--max-res 2: a power of two from 4 to 1024"),
        (["--max-res", "32"], "above the dataset's max_res 16"),
        (["--set", "data.holdout=0.02"], "too few to hold out 2%"),
        (["--max-res", "16", "--set", "data.holdout=0.7"], "data.holdout 0.7: must be 0.5 or less"),
    ],
)
@pytest.mark.parametrize("dry", [False, True])
def test_bad_growth_input_is_one_line_and_writes_nothing(dataset, tmp_path, extra, message, dry):
    out = tmp_path / "runs"
    args = ["train", "--data", str(dataset), "--outdir", str(out), *extra]
    result = CliRunner().invoke(main, args + (["--dry-run"] if dry else []))
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert message in result.output
    if "range" not in message:  # click's own range errors add a usage line
        assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_too_small_dataset_for_a_holdout_is_refused(tmp_path):
    from datasets_prep import make_source, write_dataset

    small = tmp_path / "small"
    write_dataset(make_source("synthetic", "12"), small, 8, workers=0, progress=False)
    result = CliRunner().invoke(main, ["train", "--data", str(small), "--outdir",
                                       str(tmp_path / "runs"), "--max-res", "8"])
    assert result.exit_code == 1 and "too few to hold out 10%" in result.output
    assert "--set data.holdout=0" in result.output and not (tmp_path / "runs").exists()
    assert split_counts(12, 0.1) == (11, 1) and split_counts(40, 0.1) == (36, 4)
    # With no preset and no --max-res, the run grows to the dataset's max_res.
    dry = CliRunner().invoke(main, ["train", "--data", str(small), "--dry-run",
                                    "--set", "data.holdout=0",
                                    "--calibration-seconds", "0"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["config"]["schedule"]["max_res"] == 8


def _dry_lr(*extra: str):
    args = ["train", "--preset", "demo", "--dry-run", "--calibration-seconds", "0", *extra]
    return CliRunner().invoke(main, args)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--set", "optim.lr_generator=8e-3"], (8e-3, 2e-3, 2e-3)),
        (["--lr", "1e-3", "--set", "optim.lr_energy=5e-4"], (1e-3, 5e-4, 1e-3)),
        (["--set", "optim.lr_inference=4e-3", "--set", "optim.lr_generator=3e-3"],
         (3e-3, 2e-3, 4e-3)),
    ],
)
def test_one_networks_learning_rate_over_the_others(extra, expected):
    result = _dry_lr(*extra)
    assert result.exit_code == 0, result.output
    lr = _rates(result)
    for name, rate in zip(("generator", "energy", "inference"), expected, strict=True):
        assert set(lr[name].values()) == {rate}, (name, lr[name])


def _rates(result) -> dict:
    optim = json.loads(result.output)["config"]["optim"]
    return {n: optim[f"lr_{n}"] for n in ("generator", "energy", "inference")}


def test_learning_rates_per_resolution():
    result = _dry_lr("--set", "optim.lr_generator=16e-3,64:2e-3,128:1e-3")
    assert result.exit_code == 0, result.output
    lr = _rates(result)
    assert lr["generator"]["32"] == 16e-3 and lr["generator"]["4"] == 16e-3
    assert lr["generator"]["64"] == 2e-3 and lr["generator"]["128"] == 1e-3
    assert set(lr["energy"].values()) == {2e-3} and set(lr["inference"].values()) == {2e-3}
    # A per-resolution --lr is every network's; a network's own option still wins.
    result = _dry_lr("--lr", "1e-3,8:5e-4", "--set", "optim.lr_energy=3e-4")
    assert result.exit_code == 0, result.output
    lr = _rates(result)
    for name in ("generator", "inference"):
        assert lr[name]["8"] == 5e-4 and lr[name]["16"] == 1e-3, lr[name]
    assert set(lr["energy"].values()) == {3e-4}


@pytest.mark.parametrize(
    ("value", "message"),
    [("fast", "not a value"), ("1e-3,64", "not a value"), ("1e-3,48:1e-4", "no resolution 48"),
     ("1e-3,64:-1e-4", "0 or more"), ("-1e-3", "0 or more"), ("nan", "finite")],
)
def test_bad_learning_rates_are_named(value, message):
    result = _dry_lr("--lr", value)
    assert result.exit_code == 2 and "--lr" in result.output
    assert message in result.output and "Traceback" not in result.output


def test_mixed_precision_auto_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert precision.resolve("auto", "cpu") == "bf16"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert precision.resolve("auto", "cpu") == "bf16"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert precision.resolve("auto", "cpu") == "no"
    assert "no native bf16" in precision.describe("auto", "cpu")
    assert precision.resolve("no", "cpu") == "no" and precision.resolve("fp16", "cpu") == "fp16"
    assert config(None).run.mixed_precision == "auto"


def test_stage_ends_append_evaluations_and_never_train_on_held_out_images(
    dataset, tmp_path, monkeypatch
):
    from progressive.train import loop as training

    read = []

    class Recording(training.ImageDataset):
        def batch(self, indices):
            read.extend(indices)
            return super().batch(indices)

    monkeypatch.setattr(training, "ImageDataset", Recording)
    cfg = config("demo", **TINY_NETWORKS, data=str(dataset), max_res=16, batch=4,
                      fade_kimg=0.016, stable_kimg=0.018, workers=0, tick_kimg=0.016,
                      grid_size=2)
    train(cfg, tmp_path / "run", progress=False)
    assert read and max(read) < 36  # 40 images, the last 4 held out
    evals = read_evaluations(tmp_path / "run")
    # Stages end at 18, 52 and 86 images; batches of 4 cross them at 20, 52 and 88, and each
    # evaluation is of the stage that just ended.
    assert [(e["images_shown"], e["res"]) for e in evals] == [(0, 4), (20, 4), (52, 8), (88, 16)]
    assert all(e["alpha"] == 1.0 for e in evals)
    assert all(e["n"] == 4 and e["heldout_first"] == 36 for e in evals)
    assert evals[-1]["swd_levels"] == [16] and evals[-1]["swd"] > 0
    assert evals[-1]["swd_at_init"] > 0 and evals[0]["swd"] is None  # SWD from 16 px up
    for e in evals:
        assert e["recon"] > 0 and e["recon_baseline"] > 0
        assert {len(v) for v in e["energies"].values()} == {4}
        assert e["ood_reference"].startswith("uniform noise")

    # The plot of the run: SWD and losses against images shown, and the energy panels.
    plot = tmp_path / "progress.png"
    result = CliRunner().invoke(main, ["info", str(tmp_path / "run"), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 20_000
    assert "evaluations    4" in result.output
    bad = CliRunner().invoke(main, ["info", str(tmp_path / "run"), "--plot", "x.jpg"])
    assert bad.exit_code == 1 and "must end in .png" in bad.output
    (tmp_path / "run" / EVALUATIONS).write_text('{"torn')
    assert read_evaluations(tmp_path / "run") == []


def test_energy_width_and_average_options_reach_the_configuration(tmp_path):
    args = ["train", "--max-res", "16", "--dry-run", "--calibration-seconds", "0",
            "--outdir", str(tmp_path)]
    result = CliRunner().invoke(main, args + ["--set", "optim.energy_ema_kimg=5",
                                              "--set", "networks.energy_width=3"])
    assert result.exit_code == 0, result.output
    cfg = json.loads(result.output)["config"]
    assert cfg["optim"]["energy_ema_kimg"] == 5
    assert cfg["networks"]["energy_width"] == 3
    result = CliRunner().invoke(main, args + ["--set", "optim.energy_ema_kimg=-1"])
    assert result.exit_code == 2 and "optim.energy_ema_kimg" in result.output


def test_energy_langevin_options_reach_the_configuration(tmp_path):
    args = ["train", "--max-res", "16", "--dry-run", "--calibration-seconds", "0",
            "--outdir", str(tmp_path), "--set", "loss.langevin_steps=4",
            "--set", "loss.langevin_step_size=0.02", "--set", "loss.langevin_noise=0.001"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    cfg = json.loads(result.output)["config"]
    assert (cfg["loss"]["langevin_steps"], cfg["loss"]["langevin_step_size"]) == (4, 0.02)
    assert cfg["loss"]["langevin_noise"] == 0.001
    bad = CliRunner().invoke(main, [*args[:8], "--set", "loss.langevin_step_size=0"])
    assert bad.exit_code != 0 and "loss.langevin_step_size" in bad.output
