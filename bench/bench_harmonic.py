"""Time of the harmonic fill (inpainting's blend and the recovery metric's baseline): solved on
each image's box around its holes against the same conjugate gradients over the whole frame.

    python bench/bench_harmonic.py [--res 256 --res 512 ...] [--n 4] [--repeats 3]
        [--out bench/results/harmonic.json]

Images are smoothed noise; masks are the dataset tool's `block20` and `pepper50`. Prints the
median seconds per batch of each way, their ratio, and the largest difference between them.
"""

from __future__ import annotations

import os
import statistics
import time

import click
import torch
from machine import describe, headline, load_line, write_report

from progressive.data import masks as mk
from progressive.use.inpaint import laplace_fill, occlusion_masks, solve_harmonic


def _whole_frame(values: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    known = observed.float().expand_as(values)
    return solve_harmonic(mk.fill(values, observed, torch.zeros_like(values)), 1 - known)


def _median_seconds(fn, args: tuple, repeats: int) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


@click.command()
@click.option("--res", type=int, multiple=True, default=(256, 512, 1024), show_default=True)
@click.option("--n", type=int, default=4, show_default=True, help="Images per batch.")
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option("--out", default="bench/results/harmonic.json", show_default=True)
def main(res: tuple[int, ...], n: int, repeats: int, out: str) -> None:
    machine = describe()
    print(headline(machine))
    rows = []
    g = torch.Generator().manual_seed(0)
    laplace_fill(torch.zeros(1, 3, 16, 16), torch.ones(1, 1, 16, 16))  # warm-up, not timed
    for r in res:
        values = torch.nn.functional.avg_pool2d(torch.rand(n, 3, r, r, generator=g) * 2 - 1,
                                                9, 1, 4)
        for kind in ("block20", "pepper50"):
            observed = occlusion_masks(kind, 0, n, r, r).float()
            box, a = _median_seconds(laplace_fill, (values, observed), repeats)
            frame, b = _median_seconds(_whole_frame, (values, observed), repeats)
            rows.append({"res": r, "mask": kind, "n": n, "box_s": box, "whole_frame_s": frame,
                         "speedup": frame / box, "max_diff": (a - b).abs().max().item()})
            print(f"  {r}px {kind}: box {box:.2f} s, whole frame {frame:.2f} s", flush=True)
    print(f"\n{'res':>5s} {'mask':9s} {'box s':>8s} {'frame s':>8s} {'ratio':>6s} {'max diff':>9s}")
    for row in rows:
        print(f"{row['res']:5d} {row['mask']:9s} {row['box_s']:8.2f} {row['whole_frame_s']:8.2f} "
              f"{row['speedup']:6.1f} {row['max_diff']:9.2e}")
    machine["load_avg_end"] = os.getloadavg()[0]
    print(load_line(machine))
    print(f"wrote {write_report(out, {'machine': machine, 'rows': rows})}")


if __name__ == "__main__":
    main()
