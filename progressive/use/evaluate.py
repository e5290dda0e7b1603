"""Evaluating a trained run: the registered metrics (`registry`, `metric_set`) against a
dataset, of raw samples and of samples refined by Langevin on the energy, each appended as one
JSON line to the run's metric file (`run_folder.metric_file`)."""

from __future__ import annotations

import os

from progressive.core.errors import UserError
from progressive.model.langevin import Langevin
from progressive.run.loading import LoadedRun
from progressive.use import metric_set
from progressive.use.metric_parts import initial_generator as _initial_generator
from progressive.use.registry import METRICS as REGISTRY
from progressive.use.registry import Context, Options

METRICS = tuple(REGISTRY)  # every metric, in the order the command lists and runs them
__all__ = ["METRICS", "Options", "evaluate", "summary", "_initial_generator"]


def evaluate(
    run: LoadedRun,
    data: str | os.PathLike,
    names: list[str],
    n: int,
    *,
    inception_weights: str | None = None,
    seed: int = 0,
    chain: Langevin | None = None,
    occlude: str | None = None,
    notify=print,
    ood: list[str] | tuple[str, ...] = (),
) -> dict[str, dict]:
    """Compute the metrics `names` on `n` images of dataset `data` against `n` generated ones,
    append each to the run's `metric-<name>.jsonl`, and return the records by name.

    With a Langevin `chain` of at least one step, swd, diversity and energy are also measured
    on the refined samples (`refined`, beside `value` for the raw ones).
    FID/KID without usable Inception weights are skipped with one notice (via `notify`).
    "recovery" fills the pixels that `occlude` masks (or the dataset's own masks) hide.
    `ood`: datasets or image folders that energy-auroc tells apart from `data` (up to `n`
    images each), or the built-in `noise:flat`, `noise:smooth` and `noise:pixel`.
    """
    options = Options(data, n, seed, chain or Langevin(), occlude, tuple(ood), inception_weights,
                      notify)
    return run_metrics(run, names, options)


def run_metrics(run: LoadedRun, names: list[str], options: Options) -> dict[str, dict]:
    """`evaluate` with its options in one object."""
    unknown = [m for m in names if m not in REGISTRY]
    if unknown:
        raise UserError(
            f"--metrics: unknown {', '.join(unknown)}; choose from {', '.join(METRICS)}"
        )
    if "energy-auroc" in names and not options.ood:
        raise UserError(
            "--metrics energy-auroc needs --ood DIR (a dataset or image folder) or --ood noise:flat"
        )
    ctx = Context(run, names, options)
    results: dict[str, dict] = {}
    for name in METRICS:
        if name in names:
            fields = REGISTRY[name].compute(ctx)
            if fields is not None:
                results[name] = metric_set.record(ctx, name, fields)
    return results


def summary(rec: dict) -> str:
    """A record's details in one line, for the command's output."""
    text = REGISTRY[rec["metric"]].summary(rec)
    if "refined" in rec:
        text += f"  after {rec['langevin']['steps']} Langevin steps: {rec['refined']:.6g}"
    return text
