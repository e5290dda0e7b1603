"""How the reconstruction and energy terms pull on the generator at each resolution.

For every stage from 4 to --max-res, at alpha 1, measures the gradient norm on the generator's
parameters from the weighted reconstruction term and from the energy term of the joint loss,
under the two reconstruction weightings (`fixed`: summed error times (ref_res/res)^2; `sum`: the
reference's plain sum). Balanced training keeps the ratio rec/energy steady across stages; the
baseline (`sum`) lets it grow about 4x per stage. Uses a trained run's networks when --ckpt is
given (the balance that matters is the one during training), otherwise fresh networks.

    python bench/bench_loss_balance.py [--ckpt checkpoints/demo] [--max-res 32]
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import click
import torch
from machine import describe

# This checkout's package, not an installed one.
from progressive.config.presets import make_config
from progressive.model.networks import build_networks
from progressive.run.loading import load_run
from progressive.train import loss


def grad_norm(term: torch.Tensor, params: list[torch.Tensor]) -> float:
    grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
    return torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)).item()


def synthetic_batch(n: int, res: int) -> torch.Tensor:
    from progressive.data.synthetic import render

    images = [torch.from_numpy(render(10_000 + i, res)).permute(2, 0, 1) for i in range(n)]
    return torch.stack(images).float() / 127.5 - 1


@click.command()
@click.option(
    "--ckpt", type=str, default=None, help="Run folder or snapshot; default fresh networks."
)
@click.option("--max-res", type=int, default=32, show_default=True)
@click.option("--batch", type=int, default=32, show_default=True)
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option(
    "--out", type=click.Path(), default="bench/results/loss_balance.json", show_default=True
)
def main(ckpt, max_res, batch, repeats, out):
    torch.manual_seed(0)
    if ckpt:
        run = load_run(ckpt, "cpu", raw_generator=True)
        cfg = run.config
        g, e, i = run.generator, run.energy, run.inference
        max_res = min(max_res, run.res)
    else:
        cfg = make_config("demo", {"schedule.max_res": max_res})
        nets = build_networks(cfg.networks, max_res, cfg.optim.half_lives())
        g, e, i = nets["generator"], nets["energy"], nets["inference"]
    for net in (g, e, i):
        net.requires_grad_(True).eval()
    params = list(g.parameters())
    rows = []
    res = 4
    while res <= max_res:
        x_full = synthetic_batch(batch, max_res)
        x = torch.nn.functional.adaptive_avg_pool2d(x_full, res)
        for scaling in ("fixed", "sum"):
            w = dataclasses.replace(cfg.loss, rec_scaling=scaling)
            ratios, recs, energies = [], [], []
            for r in range(repeats):
                seeded = torch.Generator().manual_seed(r)
                z = torch.randn(batch, cfg.networks.latent, generator=seeded)
                mu, logvar = i(x, 1.0)
                x_rec = g(mu + (0.5 * logvar).exp() * torch.randn_like(mu), res, 1.0)
                x_fake = g(z, res, 1.0)
                rec_term = loss.rec_scale(res, w) * loss.reconstruction(x, x_rec)
                energy_term = w.energy * e(x_fake, 1.0).mean()
                n_rec, n_e = grad_norm(rec_term, params), grad_norm(energy_term, params)
                recs.append(n_rec)
                energies.append(n_e)
                ratios.append(n_rec / max(n_e, 1e-12))
            rows.append(
                {
                    "res": res,
                    "rec_scaling": scaling,
                    "grad_rec": statistics.median(recs),
                    "grad_energy": statistics.median(energies),
                    "ratio": statistics.median(ratios),
                }
            )
        res *= 2
    machine = describe()
    nets = "from " + ckpt if ckpt else "fresh (demo widths)"
    print(f"machine: {machine['cpu']}, torch {machine['torch']}; networks: {nets}")
    print(
        f"{'res':>5} {'scaling':>8} {'|grad rec|':>12} {'|grad E|':>10} {'rec/E':>10} {'vs 4px':>8}"
    )
    first = {r["rec_scaling"]: r["ratio"] for r in rows if r["res"] == 4}
    for r in rows:
        r["ratio_vs_4px"] = r["ratio"] / first[r["rec_scaling"]]
        print(
            f"{r['res']:>5} {r['rec_scaling']:>8} {r['grad_rec']:>12.3f} {r['grad_energy']:>10.4f} "
            f"{r['ratio']:>10.1f} {r['ratio_vs_4px']:>8.2f}"
        )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"machine": machine, "ckpt": ckpt, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
