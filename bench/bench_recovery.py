"""Recovery of occluded pixels on a held-out dataset: mean-colour fill, OpenCV's Telea
inpainting, harmonic fill, and trained runs' completions, for every occlusion kind.

    python bench/bench_recovery.py --data HELDOUT --run complete=RUN_A --run block20=RUN_B \
        [--kinds block20,block30] [--sweep RUN] [--out bench/results/recovery.json]

Masks are those of `tools/make_lmdb.py --occlude KIND` (seed 0) made at the dataset's max_res.
Each run is used at its final resolution; MAE is over the missing pixels on [0, 1]. --sweep
RUN also compares completion settings (EM rounds, steps on z, blend, energy steps) on the first
kind.
Needs `pip install -e '.[bench]'` (OpenCV).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import click
import numpy as np
import torch
from machine import describe

# This checkout's package, not an installed one.
from progressive.data import masks as mk
from progressive.data.reader import ImageDataset
from progressive.run.loading import load_run
from progressive.use import inpaint


def telea(images: torch.Tensor, masks: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """OpenCV's Telea fast-marching inpainting of each image's missing pixels (uint8)."""
    import cv2

    out = []
    for img, m in zip(images, masks, strict=True):
        hole = (m[0].numpy() == 0).astype(np.uint8)
        # missing pixels zeroed: the method must not see them (it returns an all-missing
        # image unchanged)
        hwc = np.ascontiguousarray(img.permute(1, 2, 0).numpy() * (1 - hole)[..., None])
        out.append(torch.from_numpy(cv2.inpaint(hwc, hole, radius, cv2.INPAINT_TELEA)))
    return torch.stack(out).permute(0, 3, 1, 2).contiguous()


def row(name: str, kind: str, completed: torch.Tensor, real, masks, seconds: float) -> dict:
    err = inpaint.recovery_error(completed, real, masks)
    return {"method": name, "kind": kind, "mae": round(err["mae"], 5),
            "psnr": round(err["psnr"], 3), "seconds": round(seconds, 2)}


@click.command()
@click.option("--data", required=True, help="Held-out dataset.")
@click.option("--run", "runs", multiple=True, help="NAME=RUN_FOLDER, repeatable.")
@click.option("--kinds", default=",".join(mk.KINDS), show_default=True)
@click.option("--n", type=int, default=500, show_default=True)
@click.option("--sweep", default=None, help="A NAME of --run: compare completion settings.")
@click.option("--out", default="bench/results/recovery.json", show_default=True)
def main(data, runs, kinds, n, sweep, out) -> None:
    torch.manual_seed(0)
    loaded = {}
    for spec in runs:
        name, path = spec.split("=", 1)
        loaded[name] = load_run(path, "cpu")
    res = {r.res for r in loaded.values()} or {ImageDataset(data, 4).max_res}
    if len(res) != 1:
        raise SystemExit("all runs must be at one resolution")
    res = res.pop()
    ds = ImageDataset(data, res)
    n = min(n, len(ds))
    real = ds.batch(list(range(n)))
    rows = []
    for kind in kinds.split(","):
        masks = inpaint.occlusion_masks(kind, 0, n, ds.max_res, res)
        t = time.perf_counter()
        rows.append(row("mean-colour fill", kind, inpaint.mean_colour_fill(real, masks), real,
                        masks, time.perf_counter() - t))
        t = time.perf_counter()
        rows.append(row("OpenCV Telea", kind, telea(real, masks), real, masks,
                        time.perf_counter() - t))
        t = time.perf_counter()
        rows.append(row("harmonic fill", kind, inpaint.harmonic_fill(real, masks), real, masks,
                        time.perf_counter() - t))
        for name, run in loaded.items():
            t = time.perf_counter()
            done = inpaint.complete(run, real, masks)
            rows.append(row(f"model: {name}", kind, done, real, masks, time.perf_counter() - t))
    sweep_rows = []
    if sweep:
        kind = kinds.split(",")[0]
        masks = inpaint.occlusion_masks(kind, 0, n, ds.max_res, res)
        settings = [(2, 20, False, 0), (1, 0, True, 0), (2, 0, True, 0), (4, 20, True, 0),
                    (2, 20, True, 0), (2, 100, True, 0), (2, 20, True, 20)]
        for em, zs, blend, es in settings:
            how = inpaint.Completion(em_rounds=em, z_steps=zs, blend=blend, energy_steps=es)
            t = time.perf_counter()
            done = inpaint.complete(loaded[sweep], real, masks, how)
            name = f"em {em}, z steps {zs}, blend {'on' if blend else 'off'}, energy steps {es}"
            r = row(name, kind, done, real, masks, time.perf_counter() - t)
            sweep_rows.append(r)
    print(f"{n} held-out images at {res}px; MAE over missing pixels on [0, 1], PSNR in dB")
    print(f"{'kind':10s} {'method':50s} {'MAE':>8s} {'PSNR':>7s} {'s':>7s}")
    for r in rows + sweep_rows:
        print(f"{r['kind']:10s} {r['method']:50s} {r['mae']:8.4f} {r['psnr']:7.2f} "
              f"{r['seconds']:7.2f}")
    for kind in kinds.split(","):
        mine = [r for r in rows if r["kind"] == kind]
        best_classical = max(min(r["mae"] for r in mine[:3]), 1e-12)
        for r in mine[3:]:
            print(f"{kind}: {r['method']} MAE / best classical = {r['mae'] / best_classical:.3f}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"machine": describe(), "n": n, "res": res, "rows": rows,
                                     "sweep": sweep_rows,
                                     "median_mae": statistics.median(r["mae"] for r in rows)},
                                    indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
