"""`progressive train --dry-run`: what a run will do and cost, without training or writing.

Per stage: the images shown when it starts and ends, its batch and learning rates, the widths,
the expected seconds (from a short calibration: a few real training steps at each resolution
this device can time within the budget, the rest extrapolated by the forward FLOPs per image),
and the expected peak memory (the training step replayed on fake tensors in the run's
precision: `progressive.train.memory`). Also the built-in data's disk and rendering time (one
image rendered and encoded, timed), and the mixed precision.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from progressive.config.schedule import NETWORKS, Phase, Schedule
from progressive.config.sections import Config
from progressive.config.sizing import RULE_TEXT, builtin_encoding, default_device
from progressive.core import images as im
from progressive.core.files import tree_size
from progressive.data.synthetic import render
from progressive.data.writer import encodings_for
from progressive.model.layers import channels, num_parameters
from progressive.model.networks import build_networks
from progressive.run.folder import builtin_dataset_path
from progressive.train import memory, precision
from progressive.train.data import check_data
from progressive.train.trainer import Trainer

CALIBRATION_STEPS = 2  # timed steps per resolution, after one warm-up step
MAX_STEP_SECONDS = 1.0  # a resolution whose step takes longer ends the measured part


def _forward_flops(cfg: Config, res: int) -> float:
    """Forward FLOPs per image of one training step at `res`, counted on the meta device: the
    generator on two latents, the inference model on a real and a generated image, the energy
    model on four images (real, generated and outlier in its own step; generated, frozen)."""
    with torch.device("meta"):
        nets = build_networks(cfg.networks, cfg.schedule.max_res, cfg.optim.half_lives())
    g, e, i = nets["generator"], nets["energy"], nets["inference"]
    z = torch.zeros(2, cfg.networks.latent, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        x = g(z, res, 1.0)
        i(x, 1.0)
        e(torch.cat([x, x]), 1.0)
    return counter.get_total_flops()


def _calibrate(cfg: Config, resolutions: list[int], budget_s: float) -> dict[int, dict]:
    """Seconds per image of real training steps (random pixels) at each resolution, lowest
    first, until the budget is spent or one step takes longer than MAX_STEP_SECONDS."""
    trainer = Trainer.create(cfg)
    device = trainer.accelerator.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    spent, out = 0.0, {}
    for res in resolutions:
        if spent >= budget_s:
            break
        batch = cfg.schedule.batch[res]
        phase = Phase(0, res, 1.0, False, batch, {n: 0.0 for n in NETWORKS}, 0, None)
        real = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        trainer.step(real, phase, 0)  # warm-up: allocation, cuDNN's algorithm search
        sync()
        first = time.perf_counter() - start
        spent += first
        if first > 4 * MAX_STEP_SECONDS:
            break  # even the timed steps would not fit: extrapolate from here on
        times = []
        for _ in range(CALIBRATION_STEPS):
            start = time.perf_counter()
            trainer.step(real, phase, 0)
            sync()
            times.append(time.perf_counter() - start)
        spent += sum(times)
        step = sorted(times)[len(times) // 2]
        out[res] = {"seconds_per_image": step / batch}
        if device.type == "cuda":
            out[res]["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        if step > MAX_STEP_SECONDS:
            break
    return out


def builtin_data_cost(cfg: Config, out: Path) -> dict:
    """Where the built-in data goes and what rendering it costs: disk and seconds from one
    image rendered, pyramided and encoded here (timed), times the image count, over every core
    (the writer's default)."""
    max_res, count = cfg.schedule.max_res, cfg.data.synthetic_count
    path = builtin_dataset_path(out, max_res, count)
    info = {"path": str(path), "images": count, "encoding": builtin_encoding(max_res)}
    if (path / "meta.json").exists():
        return info | {"exists": True, "disk_bytes": tree_size(path), "seconds_expected": 0.0}
    enc = encodings_for(max_res, info["encoding"])
    timings, sizes = [], 0
    for index in range(2):  # the first call pays for imports and allocation
        start = time.perf_counter()
        levels = im.pyramid(render(index, max_res))
        sizes = sum(len(im.encode(levels[r], e)) for r, e in enc.items())
        timings.append(time.perf_counter() - start)
    workers = os.cpu_count() or 1
    return info | {
        "exists": False,
        "disk_bytes_expected": sizes * count,
        "seconds_expected": round(timings[-1] * count / workers, 1),
        "how": f"one image rendered and encoded here in {timings[-1]:.3f} s, times {count} "
        f"images over {workers} worker(s); disk from its encoded size",
    }


def dry_run_summary(cfg: Config, out: Path, calibration_s: float = 20.0) -> dict:
    """The resolved configuration and the plan of the run (see the module doc) as a dict."""
    check_data(cfg)
    device = default_device()
    schedule = Schedule.from_config(cfg)
    total = schedule.total(cfg)
    nets = build_networks(cfg.networks, cfg.schedule.max_res, cfg.optim.half_lives())
    widths = {
        r: channels(r, cfg.networks.fmap_base, cfg.networks.fmap_max, cfg.networks.fmap_min)
        for r in schedule.resolutions
    }
    measured = _calibrate(cfg, schedule.resolutions, calibration_s) if calibration_s > 0 else {}
    flops = {r: _forward_flops(cfg, r) for r in schedule.resolutions}
    chosen = precision.resolve(cfg.run.mixed_precision, device)
    table = schedule.stage_table()
    peaks = memory.stage_peaks(
        cfg, [(e["res"], e["batch"], e["fade_kimg"] > 0) for e in table], chosen
    )
    last = max(measured) if measured else None
    stages, seconds_total = [], 0.0
    for i, entry in enumerate(table):
        res = entry["res"]
        start = schedule.starts[i]
        end = min(schedule.starts[i + 1] if i + 1 < len(schedule.starts) else total, total)
        images = max(0, end - start)
        entry = {
            **entry,
            "width": widths[res],
            "images_shown": [start, end],
            "images": images,
            "forward_gflop_per_image": round(flops[res] / 1e9, 4),
        }
        if res in measured:
            per_image, source = measured[res]["seconds_per_image"], "calibration: measured"
        elif last is not None:
            per_image = measured[last]["seconds_per_image"] * flops[res] / flops[last]
            source = f"calibration: measured at {last}px, scaled by forward FLOPs"
        else:
            per_image, source = None, "not calibrated"
        entry["seconds_expected"] = round(per_image * images, 1) if per_image else None
        entry["seconds_source"] = source
        seconds_total += entry["seconds_expected"] or 0.0
        entry["peak_memory_bytes_expected"] = peaks[i].pop("peak")
        entry["peak_memory_parts_expected"] = peaks[i]
        if "peak_memory_bytes" in measured.get(res, {}):
            entry["peak_memory_bytes_measured"] = measured[res]["peak_memory_bytes"]
        stages.append(entry)
    summary = {
        "rule": RULE_TEXT if cfg.preset == "auto" else f"preset {cfg.preset}",
        "device": device,
        "mixed_precision": precision.describe(cfg.run.mixed_precision, device),
        "fmap_min": cfg.networks.fmap_min,
        "config": cfg.to_dict(),
        "parameters": {n: num_parameters(nets[n]) for n in NETWORKS},
        "stages": stages,
        "memory": {
            "covers": memory.COVERS,
            "precision": chosen,
            "note": "every peak_memory_bytes_expected is an estimate, on a GPU too; "
            "peak_memory_bytes_measured (GPU, calibrated stages) is torch's allocator peak, "
            "which adds cuDNN's workspaces; bench/bench_plan_memory.py compares estimate and "
            "measurement on the CPU",
        },
        "images_shown_total": total,
        "seconds_expected_total": round(seconds_total, 1),
        "calibration": {
            "budget_s": calibration_s,
            "steps_per_resolution": CALIBRATION_STEPS,
            "measured_seconds_per_image": {r: m["seconds_per_image"] for r, m in measured.items()},
            "note": "random pixels, stable phase; fade-in steps cost a little more",
        },
    }
    if cfg.data.path is None:
        summary["builtin_data"] = builtin_data_cost(cfg, out)
    return summary
