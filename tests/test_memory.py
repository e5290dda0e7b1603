"""The peak memory estimate: the training step replayed on fake tensors."""

import json

from click.testing import CliRunner
from tiny import config, networks_of

from progressive.cli.main import main
from progressive.config.schedule import NETWORKS
from progressive.model.layers import num_parameters
from progressive.train.memory import step_peaks


def _cfg(**over):
    return config("demo", max_res=8, latent=16, fmap_base=64, fmap_max=16, fmap_min=4, **over)


def test_estimate_grows_with_batch_and_resolution_and_counts_bf16_below_fp32():
    cfg = _cfg()
    steps = [(4, 2, 1.0), (4, 2, 1.0), (4, 8, 1.0), (8, 8, 0.5), (8, 8, 0.5)]
    fp32 = [p["peak"] for p in step_peaks(cfg, steps, "no")]
    bf16 = [p["peak"] for p in step_peaks(cfg, steps, "bf16")]
    for peaks in (fp32, bf16):
        assert peaks[2] > peaks[1]  # batch 8 over batch 2
        assert peaks[4] > peaks[2]  # 8 px over 4 px
    assert bf16[4] < fp32[4]


def test_estimate_holds_networks_averages_adam_and_the_outliers_pass():
    cfg = _cfg()
    parts = step_peaks(cfg, [(8, 8, 1.0)] * 2, "no")[-1]
    nets = networks_of(cfg)
    trained = sum(num_parameters(nets[n]) for n in NETWORKS)
    averages = sum(num_parameters(m) for n, m in nets.items() if n not in NETWORKS)
    assert parts["weights"] == 4 * trained
    assert parts["averages"] >= 4 * averages  # and every network's buffers
    # the 4 px adapters sit idle at 8 px: neither gradients nor moments
    assert 0 < parts["gradients"] < parts["weights"]
    assert parts["adam_moments"] == 2 * parts["gradients"]
    assert parts["peak"] > sum(v for k, v in parts.items() if k != "peak")
    no_outliers = _cfg(loss={"energy_outliers": 0.0})
    assert step_peaks(no_outliers, [(8, 8, 1.0)] * 2, "no")[-1]["peak"] < parts["peak"]


def test_estimate_replays_langevin_negatives_with_noise_and_r1():
    plain = step_peaks(_cfg(), [(8, 4, 1.0)] * 2, "no")[-1]["peak"]
    research = _cfg(loss={"energy_r1": 0.1, "langevin_steps": 2, "langevin_noise": 0.01})
    assert step_peaks(research, [(8, 4, 1.0)] * 2, "no")[-1]["peak"] > plain


def test_dry_run_says_what_the_memory_estimate_covers(tmp_path):
    args = ["train", "--preset", "demo", "--max-res", "8", "--dry-run",
            "--calibration-seconds", "0", "--outdir", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert "estimate" in plan["memory"]["note"] and "outlier" in plan["memory"]["covers"]
    for stage in plan["stages"]:
        parts = stage["peak_memory_parts_expected"]
        assert sum(parts.values()) >= stage["peak_memory_bytes_expected"] > 0
        assert parts["weights"] > 0 and parts["adam_moments"] > 0
