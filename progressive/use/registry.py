"""The metrics of `progressive evaluate` as a registry: one function per metric, registered by
name, all reading one `Options` and one `Context` (the run, the held-out images and whatever
several metrics share, each computed once on first use and kept as uint8 where it is images).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from progressive.core.errors import UserError
from progressive.core.files import append_jsonl
from progressive.core.images import to_uint8
from progressive.data.reader import ImageDataset
from progressive.metrics import pca, quality
from progressive.metrics.stage import split_counts
from progressive.model import budget
from progressive.model.langevin import Langevin, refine_batches
from progressive.model.sampling import energies, generate_batches, prepare_real, sample_energies
from progressive.run.folder import metric_file
from progressive.run.loading import LoadedRun

PCA_TRAINING_IMAGES = 10000  # training images the PCA baselines are fitted on, at most


@dataclass(frozen=True)
class Options:
    """What every metric may read: the images compared against, how many, the seed, the
    Langevin chain of refined samples, recovery's masks, energy-auroc's other sets, FID's
    weights, and where notices go."""

    data: str | os.PathLike
    n: int = 2000
    seed: int = 0
    chain: Langevin = field(default_factory=Langevin)
    occlude: str | None = None
    ood: tuple[str, ...] = ()
    inception_weights: str | None = None
    notify: Callable[[str], None] = print


@dataclass(frozen=True)
class Metric:
    """A registered metric: its function (a record's fields with "value", or None when it is
    skipped) and its details in one line for the command's output."""

    name: str
    compute: Callable[[Context], dict | None]
    summary: Callable[[dict], str]


METRICS: dict[str, Metric] = {}


def register(name: str, summary: Callable[[dict], str] = lambda rec: ""):
    """Decorator: register `fn(ctx) -> dict | None` as metric `name`."""

    def wrap(fn: Callable[[Context], dict | None]):
        METRICS[name] = Metric(name, fn, summary)
        return fn

    return wrap


class Context:
    """The inputs metrics share, each computed once when first asked for."""

    def __init__(self, run: LoadedRun, names: list[str], options: Options):
        self.run, self.names, self.options = run, names, options
        self.ds = ImageDataset(options.data, run.res)
        self.n = min(options.n, len(self.ds))
        if self.n < 2:
            raise UserError(
                f"--data {options.data} has {len(self.ds)} image(s); metrics need at least 2"
            )
        self.real = self.ds.batch(list(range(self.n)))
        step = budget.image_batch(run.res)
        # Faded as the models saw them; past the fade-in they are the images themselves.
        self.real_in = self.real if run.alpha >= 1 else torch.cat([
            to_uint8(prepare_real(self.real[i : i + step], run.alpha))
            for i in range(0, self.n, step)
        ])
        self.refines = options.chain.steps > 0
        self._cache: dict[str, object] = {}

    def once(self, key: str, make: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _images(self, refined: bool) -> dict[str, Tensor]:
        """Samples from the seeded latents (refined by the chain), as uint8, with the energies
        the metrics asked for: as generated ("energy") and faded as real images ("faded")."""
        run, opt = self.run, self.options
        z = torch.randn(self.n, run.latent, generator=torch.Generator().manual_seed(opt.seed))
        if refined:
            batches = refine_batches(run.generator, run.energy, z, run.res, run.alpha,
                                     opt.chain, seed=opt.seed)
        else:
            batches = generate_batches(run.generator, z, run.res, run.alpha)
        out: dict[str, list[Tensor]] = {"images": [], "energy": [], "faded": []}
        for x in batches:
            out["images"].append(to_uint8(x))
            if "energy" in self.names:
                out["energy"].append(sample_energies(run.energy, x, run.alpha))
            if "energy-auroc" in self.names and not refined:
                out["faded"].append(energies(run.energy, x, run.alpha))
        return {k: torch.cat(v) for k, v in out.items() if v}

    def samples(self) -> dict[str, Tensor]:
        return self.once("samples", lambda: self._images(False))

    def refined(self) -> dict[str, Tensor] | None:
        """The refined samples, or None without a chain."""
        return self.once("refined", lambda: self._images(True)) if self.refines else None

    def chain_info(self) -> dict:
        return {"langevin": self.options.chain.as_dict()} if self.refines else {}

    def codes(self) -> tuple[Tensor, Tensor]:
        """(mu, logvar) of the held-out images."""
        run = self.run
        return self.once("codes", lambda: quality.posterior(run.inference, self.real, run.alpha))

    def training(self) -> dict | None:
        """The run's training images as the PCA baselines use them: {"pca": the fit on as many
        as the memory budget holds, "mean": the mean image of up to PCA_TRAINING_IMAGES,
        "count"}; None when the training dataset is gone."""
        return self.once("training", self._training)

    def _training(self) -> dict | None:
        data = self.run.config.data.path
        if not data or not Path(data).is_dir():
            return None
        try:
            ds = ImageDataset(data, self.run.res)
        except UserError:
            return None
        # Only the share training used: the run's held-out images are not the baseline's.
        trained, _ = split_counts(len(ds), self.run.config.data.holdout)
        count = min(PCA_TRAINING_IMAGES, trained)
        if count < 2:
            return None
        return _fit(ds.batch, count, self.run.res)

    def baseline_pca(self) -> dict:
        """The reconstruction baselines' fit: the training images' (the held-out images' when
        the training set is gone, which flatters the baseline)."""
        train = self.training()
        if train is not None:
            return train
        return self.once("heldout-pca", lambda: _fit(
            lambda idx: self.real[idx], self.n, self.run.res
        ))


def _fit(read: Callable[[list[int]], Tensor], count: int, res: int) -> dict:
    """PCA of `count` images read by index, within the memory budget, and their mean image
    (all `count`, in chunks)."""
    step = budget.image_batch(res)
    total = torch.zeros(1, 3, res, res, dtype=torch.float64)
    for i in range(0, count, step):
        total += read(list(range(i, min(i + step, count)))).double().sum(0, keepdim=True)
    mean = (total / count / 127.5 - 1).float()
    used = pca.pick(count, pca.fit_count(count, 3 * res * res))
    images = torch.cat([read(used[i : i + step]) for i in range(0, len(used), step)])
    return {"pca": pca.fit(images), "mean": mean, "count": count}


def record(ctx: Context, name: str, fields: dict) -> dict:
    """The record of metric `name`: the run's place, the data, `fields`, the time; appended to
    the run's metric file."""
    run = ctx.run
    rec = {
        "metric": name, "images_shown": run.images_shown, "res": run.res, "alpha": run.alpha,
        "snapshot": str(run.snapshot), "data": str(ctx.options.data), "n": ctx.n,
        **fields, "time": time.time(),
    }
    append_jsonl(metric_file(run.run_dir, name), rec)
    return rec
