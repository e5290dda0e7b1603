"""Does short-run Langevin on the energy improve the generator's samples?

For each chain (space, steps, step size s, temperature T) refines the same N generator samples
(seeded, the generator average) and measures them against N held-out images exactly as
`progressive evaluate --metrics swd,diversity,energy` does: SWD (x1e3, lower is better),
diversity (mean nearest-neighbour distance among samples over the same among real images,
1 = as diverse as the data) and mean energy. The baseline is the raw samples (0 steps), measured
in the same run with the same SWD directions and patches. Every sample set is measured under
`--seeds` sample seeds, so the spread between seeds shows what a difference is worth.

    python bench/bench_langevin.py --ckpt checkpoints/demo --data data/synthetic-heldout-32 \
        --n 1000 --chain image:20:1e-3:0 --chain latent:20:0.05:1
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import click
from machine import describe

# This checkout's package, not an installed one.
from progressive.core.images import to_uint8
from progressive.data.reader import ImageDataset
from progressive.metrics import fidelity as metrics
from progressive.model import sampling
from progressive.model.langevin import Langevin
from progressive.run.loading import load_run

DEFAULT_CHAINS = [
    "image:10:1e-4:0",
    "image:10:1e-3:0",
    "image:10:1e-3:0.01",
    "image:50:1e-3:0.01",
    "latent:10:0.01:1",
    "latent:10:0.05:1",
    "latent:50:0.05:1",
    "latent:10:0.05:0",
]


def parse_chain(text: str) -> Langevin:
    space, steps, step_size, noise = text.split(":")
    return Langevin(int(steps), float(step_size), float(noise), space)


def measure(model, real, real_in, chain: Langevin, seed: int) -> dict:
    start = time.perf_counter()
    args = (model.generator, len(real), seed, model.latent, model.res, model.alpha)
    fake = sampling.sample(*args, energy=model.energy, chain=chain)
    seconds = time.perf_counter() - start
    return {
        "swd": metrics.sliced_wasserstein(real_in, fake, seed=0)["mean"],
        "diversity": metrics.diversity(fake, real_in)["value"],
        "energy": sampling.sample_energies(model.energy, fake, model.alpha).mean().item(),
        "seconds": seconds,
    }


@click.command()
@click.option("--ckpt", required=True, type=str, help="Run folder or snapshot.")
@click.option("--data", required=True, type=str, help="Held-out dataset.")
@click.option("--n", type=int, default=1000, show_default=True)
@click.option("--chain", "chains", multiple=True, help="SPACE:STEPS:STEP_SIZE:NOISE, repeatable.")
@click.option("--seeds", type=str, default="0,1", show_default=True, help="Sample seeds.")
@click.option("--out", type=click.Path(), default="bench/results/langevin.json", show_default=True)
def main(ckpt, data, n, chains, seeds, out):
    machine = describe()
    model = load_run(ckpt, "cpu")
    ds = ImageDataset(data, model.res)
    n = min(n, len(ds))
    real = ds.batch(list(range(n)))
    real_in = to_uint8(sampling.prepare_real(real, model.alpha))
    e_real = sampling.energies(model.energy, real, model.alpha).mean().item()
    seed_list = [int(s) for s in seeds.split(",")]
    settings = [Langevin(0)] + [parse_chain(c) for c in chains or DEFAULT_CHAINS]
    rows = []
    for chain in settings:
        runs = [measure(model, real, real_in, chain, s) for s in seed_list]
        row = {"chain": chain.as_dict(), "runs": runs}
        for key in ("swd", "diversity", "energy", "seconds"):
            row[key] = statistics.median(r[key] for r in runs)
        rows.append(row)
        print(f"done {chain}: swd {row['swd']:.2f}", flush=True)
    raw = rows[0]
    print(
        f"\n{model.run_dir} at {model.res}px, n={n}, held-out energy {e_real:.3g}; "
        f"median over sample seeds {seed_list} (per-seed values in brackets)\n"
    )
    header = "| space | steps | step size | T | SWD x1e3 | vs raw | diversity | mean energy | s |"
    print(header)
    print("|" + "---|" * 9)
    for row in rows:
        c = row["chain"]
        runs = row["runs"]

        def each(key: str, runs=runs) -> str:
            return "/".join(f"{r[key]:.3g}" for r in runs)

        print(
            f"| {c['space'] if c['steps'] else 'raw'} | {c['steps']} | {c['step_size']:g} | "
            f"{c['noise']:g} | {row['swd']:.2f} ({each('swd')}) | {row['swd'] / raw['swd']:.2f}x"
            f" | {row['diversity']:.3f} ({each('diversity')}) | {row['energy']:.3g} | "
            f"{row['seconds']:.1f} |"
        )
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "machine": machine,
                "ckpt": str(ckpt),
                "data": str(data),
                "n": n,
                "res": model.res,
                "alpha": model.alpha,
                "images_shown": model.images_shown,
                "energy_real": e_real,
                "rows": rows,
            },
            indent=1,
        )
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
