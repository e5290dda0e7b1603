"""How much the energy model's ranking and offset move from one training step to the next.

    python bench/bench_energy_steps.py RUN [RUN ...] --heldout data/celeba32-test \\
        --ood cifar=data/cifar32-test --steps 30 --out checkpoints/quality

A snapshot's energy is one moment of training. This continues each run's newest snapshot for
`--steps` steps on its own training images (its weights, Adam state, configuration and loss;
batches drawn at random with a fixed seed), and after every step scores `--n` held-out images
and `--n` images of each other set (spread evenly over the set). Per run it reports the AUROC
of telling each set from the held-out faces by energy (median, smallest, largest over the
steps, and at the snapshot itself), the spread of the held-out mean energy over the steps and
of its change from one step to the next, both in units of the held-out energies' own standard
deviation. With an average of the energy model (`--energy-ema-kimg`), the average is scored
too, so the two are side by side. The first run named is the baseline of the ratio column.
Writes a table to stdout and `energy_steps.json` under `--out` and `bench/results/`; one CPU
thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

from machine import describe, headline  # noqa: E402

from progressive.config.schedule import Schedule  # noqa: E402
from progressive.core.files import write_text_atomic  # noqa: E402
from progressive.core.images import to_float  # noqa: E402
from progressive.data.reader import ImageDataset  # noqa: E402
from progressive.metrics.quality import auroc  # noqa: E402
from progressive.metrics.stage import split_counts  # noqa: E402
from progressive.model.networks import in_use  # noqa: E402
from progressive.run import loading  # noqa: E402
from progressive.run.folder import list_snapshots  # noqa: E402
from progressive.train.trainer import Trainer  # noqa: E402
from progressive.use.generate import load_images  # noqa: E402


def continue_run(run: Path, heldout: str, ood: dict[str, str], steps: int, n: int) -> dict:
    """Score the energy (and its average, if kept) after each of `steps` further steps."""
    snapshot = list_snapshots(run)[-1]
    state = loading.read_state(snapshot)
    cfg = state["config"]
    trainer = Trainer.create(cfg)
    loading.load_weights(snapshot, trainer.unwrapped())
    loading.load_optimizers(snapshot, trainer.optimizers)
    shown = state["images_shown"]
    phase = Schedule.from_config(cfg).at(shown)
    res = phase.res
    data = ImageDataset(cfg.data.path, res)
    train_count, _ = split_counts(len(data), cfg.data.holdout)
    inside = to_float(load_images(heldout, res, cfg.schedule.max_res, n, spread=True)[1])
    others = {k: to_float(load_images(v, res, cfg.schedule.max_res, n, spread=True)[1])
              for k, v in ood.items()}
    energy = trainer.accelerator.unwrap_model(trainer.energy)
    kept = {"energy": energy}
    average = in_use(trainer.unwrapped(), "energy")
    if average is not energy:
        kept["energy_ema"] = average
    scores: dict[str, list[dict]] = {name: [] for name in kept}
    draw = torch.Generator().manual_seed(0)

    @torch.no_grad()
    def score() -> None:
        for name, net in kept.items():
            e_in = net(inside, phase.alpha)
            scores[name].append({
                "heldout_mean": e_in.mean().item(), "heldout_std": e_in.std().item(),
                "auroc": {k: auroc(e_in, net(x, phase.alpha)) for k, x in others.items()},
            })

    score()
    for step in range(steps):
        batch = data.batch(torch.randint(0, train_count, (phase.batch,), generator=draw).tolist())
        trainer.step(batch, phase, shown + step * phase.batch)
        score()
    return {"seed": cfg.run.seed, **{name: summarize(rows) for name, rows in scores.items()}}


def summarize(rows: list[dict]) -> dict:
    """AUROC median / range over the steps after the snapshot; offset spreads in units of the
    held-out energies' median standard deviation."""
    means = [r["heldout_mean"] for r in rows[1:]]
    std = statistics.median(r["heldout_std"] for r in rows[1:])
    changes = [b - a for a, b in zip(means[:-1], means[1:], strict=True)]
    out = {
        "auroc": {},
        "offset_spread_in_std": statistics.pstdev(means) / std,
        "step_change_in_std": statistics.pstdev(changes) / std,
        "rows": rows,
    }
    for name in rows[0]["auroc"]:
        values = [r["auroc"][name] for r in rows[1:]]
        out["auroc"][name] = {
            "snapshot": rows[0]["auroc"][name], "median": statistics.median(values),
            "min": min(values), "max": max(values),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (the first is the baseline)")
    ap.add_argument("--heldout", required=True, help="dataset of held-out images")
    ap.add_argument("--ood", action="append", default=[], help="NAME=DATASET (repeatable)")
    ap.add_argument("--steps", type=int, default=30, help="training steps after the snapshot")
    ap.add_argument("--n", type=int, default=500, help="images per set")
    ap.add_argument("--out", type=Path, default=ROOT / "checkpoints" / "quality")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ood = {}
    for item in args.ood:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            sys.exit(f"--ood {item!r}: expected NAME=DATASET, e.g. cifar=data/cifar32-test")
        ood[name] = path
    if not ood:
        sys.exit("--ood: name at least one other set, e.g. --ood cifar=data/cifar32-test")
    for run in args.runs:
        if not list_snapshots(run):
            sys.exit(f"{run}: no snapshot; pass a run folder that holds one")
    machine = describe()
    results = {}
    for run in args.runs:
        print(f"continuing {run} for {args.steps} steps", flush=True)
        results[str(run)] = continue_run(run, args.heldout, ood, args.steps, args.n)
    first = next(iter(ood))
    base = results[str(args.runs[0])]["energy"]["auroc"][first]["median"]
    kept_names = ("energy", "energy_ema")
    head = (f"| run | energy | AUROC {first} at snapshot | median (min-max) over steps | "
            f"ratio to first | offset spread / sd | step change / sd |")
    lines = [headline(machine), "", head, "| --- | --- | --- | --- | --- | --- | --- |"]
    for run, kept in results.items():
        for name in (n for n in kept_names if n in kept):
            s, a = kept[name], kept[name]["auroc"][first]
            lines.append(
                f"| {Path(run).name}, seed {kept['seed']} | {name} | {a['snapshot']:.2f} | "
                f"{a['median']:.2f} "
                f"({a['min']:.2f}-{a['max']:.2f}) | {a['median'] / base:.2f}x | "
                f"{s['offset_spread_in_std']:.2f} | {s['step_change_in_std']:.2f} |"
            )
    print("\n".join(lines))
    report = json.dumps({"machine": machine, "args": vars(args), "results": results}, indent=1,
                        default=str)
    for folder in (args.out, ROOT / "bench" / "results"):
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / "energy_steps.json", report)


if __name__ == "__main__":
    main()
