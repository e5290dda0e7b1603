"""The held-out split of a training dataset and the evaluation appended at every stage end.

Hold-out: the last `holdout` fraction of a dataset by index (rounded down) is never trained
on. Datasets made from a folder or zip are numbered in file-name order, so this is the last
10% by name. Each stage end (and the starting point) appends one JSON line to
`evaluations.jsonl` in the run folder, on up to `eval_images` held-out images:
- SWD (progressive GAN's, x1e3) at the current resolution between held-out images and samples
  of the generator average from fixed latents, and the same for the generator as initialised
  (`swd_at_init`); from 16 px up, as SWD's smallest pyramid level is 16 px;
- held-out reconstruction error (MSE per image, [-1, 1]) through the inference model and the
  generator average, beside the mean-image baseline (predicting every held-out image by the
  mean of as many training images);
- the energy of held-out real images, of the samples, and of an out-of-distribution reference:
  uniform noise in [-1, 1] (fixed seed), which a working energy model scores far above real
  images. Per-image energies are kept for histograms.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from progressive.config.sections import Config
from progressive.core.errors import UserError
from progressive.core.files import append_jsonl, read_jsonl
from progressive.core.images import to_float, to_uint8
from progressive.data.reader import ImageDataset
from progressive.metrics import fidelity as metrics
from progressive.model.layers import fade_real
from progressive.model.networks import in_use, initial_networks
from progressive.run.folder import EVALUATIONS_NAME

EVALUATIONS = EVALUATIONS_NAME
HOLDOUT_MIN = 2  # held-out images a dataset must leave at least
OOD_REFERENCE = "uniform noise in [-1, 1]"


def split_counts(count: int, holdout: float) -> tuple[int, int]:
    """(training images, held-out images) of a dataset of `count` images."""
    held = math.floor(count * holdout + 1e-9)
    return count - held, held


def check_holdout(count: int, holdout: float, where: str) -> tuple[int, int]:
    """`split_counts`, or a one-line error when the dataset is too small to hold out images."""
    train, held = split_counts(count, holdout)
    if holdout > 0 and held < HOLDOUT_MIN:
        need = math.ceil(HOLDOUT_MIN / holdout)
        raise UserError(
            f"{where} has {count} images, too few to hold out {holdout:.0%} for evaluation "
            f"(at least {HOLDOUT_MIN} images, so {need} in all); add images or pass "
            "--set data.holdout=0"
        )
    if train < 1:
        raise UserError(f"{where}: data.holdout {holdout} leaves no images to train on")
    return train, held


def read_evaluations(run_dir: str | os.PathLike) -> list[dict]:
    """The evaluations of a run, oldest first; unreadable lines (a torn last line) skipped."""
    return read_jsonl(Path(run_dir) / EVALUATIONS)


def chunk_size(res: int) -> int:
    """Images per forward pass: 64 at 64 px and below, fewer above (one at 512 and 1024), so
    evaluating at 1024 px needs no more memory than at 64."""
    return max(1, min(64, (1 << 18) // (res * res)))


class StageEvaluator:
    """Fixed held-out images, latents and OOD reference for one run; `evaluate` measures the
    networks at a stage end and appends the record to the run's evaluations.jsonl."""

    def __init__(
        self, cfg: Config, run_dir: Path, device: torch.device,
        starting_networks: Callable[[dict], dict] | None = None,
    ):
        """`starting_networks(cfg)`: the networks as the run started them, for SWD at
        initialization; default `networks.initial_networks`."""
        self.cfg, self.run_dir, self.device = cfg, Path(run_dir), device
        self._starting_networks = starting_networks or initial_networks
        count = len(ImageDataset(cfg.data.path, 4))
        self.train_count, held = split_counts(count, cfg.data.holdout)
        self.n = min(cfg.run.eval_images, held)
        self.indices = list(range(self.train_count, self.train_count + self.n))
        seeded = torch.Generator().manual_seed(cfg.run.seed + 1)
        self.z = torch.randn(self.n, cfg.networks.latent, generator=seeded)
        self._noise_seed = cfg.run.seed + 2
        self._swd0_cache: dict[int, dict] = {}
        self._g0: torch.nn.Module | None = None  # the starting generator average
        self._mean_cache: dict[int, Tensor] = {}

    @property
    def enabled(self) -> bool:
        return self.n >= HOLDOUT_MIN

    def _reals(self, res: int, indices: list[int]) -> Tensor:
        return ImageDataset(self.cfg.data.path, res).batch(indices)

    def _swd_at_init(self, res: int, real: Tensor, alpha: float) -> dict:
        """SWD of the generator as initialised, once per resolution (the baseline to beat)."""
        if res not in self._swd0_cache:
            if self._g0 is None:  # built once per run (a PCA refit, full-size networks)
                with torch.random.fork_rng(devices=[]):
                    started = self._starting_networks(self.cfg)
                self._g0 = started["generator_ema"].eval()
            g0 = self._g0.to(self.device)
            fake0 = self._sample(g0, res, alpha)
            self._g0 = g0.cpu()  # between stage ends it holds no device memory
            self._swd0_cache[res] = metrics.sliced_wasserstein(real, fake0, seed=0)
        return self._swd0_cache[res]

    def _sample(self, generator: torch.nn.Module, res: int, alpha: float) -> Tensor:
        """uint8 samples from the fixed latents, as they would be saved."""
        step = chunk_size(res)
        return torch.cat([
            to_uint8(generator(self.z[i : i + step].to(self.device), res, alpha).cpu())
            for i in range(0, self.n, step)
        ])

    def _train_mean(self, res: int) -> Tensor:
        """The mean of as many training images as are evaluated (the first ones), float; read
        once per resolution."""
        if res not in self._mean_cache:
            count, step = min(self.n, self.train_count), chunk_size(res)
            total = torch.zeros(1, 3, res, res, dtype=torch.float64)
            for i in range(0, count, step):
                batch = self._reals(res, list(range(i, min(i + step, count))))
                total += to_float(batch).double().sum(dim=0, keepdim=True)
            self._mean_cache[res] = (total / count).float()
        return self._mean_cache[res]

    @torch.no_grad()
    def evaluate(
        self, networks: dict[str, torch.nn.Module], res: int, alpha: float, images_shown: int,
        stage: int,
    ) -> dict | None:
        """Measure and append one record (see the module doc); None when there is no hold-out."""
        if not self.enabled:
            return None
        start = time.perf_counter()
        g, inference = networks["generator_ema"], in_use(networks, "inference")
        energy = in_use(networks, "energy")
        modes = {n: m.training for n, m in networks.items()}
        for m in networks.values():
            m.eval()
        dev, step = self.device, chunk_size(res)
        noise_gen = torch.Generator().manual_seed(self._noise_seed)
        parts: dict[str, list[Tensor]] = {
            k: [] for k in ("real", "fake", "err", "base", "e_real", "e_fake", "e_ood")
        }
        try:
            mean = self._train_mean(res)
            for i in range(0, self.n, step):
                real_f = fade_real(to_float(self._reals(res, self.indices[i:i + step])),
                                   alpha)
                real_u8 = to_uint8(real_f)
                recon = g(inference(real_f.to(dev), alpha)[0], res, alpha).cpu()
                fake = g(self.z[i : i + step].to(dev), res, alpha)
                noise = torch.rand(real_f.shape, generator=noise_gen) * 2 - 1
                parts["real"].append(real_u8)
                parts["fake"].append(to_uint8(fake.cpu()))
                parts["err"].append(metrics.reconstruction_error(real_u8, recon))
                parts["base"].append(
                    metrics.reconstruction_error(real_u8, mean.expand_as(real_f))
                )
                parts["e_real"].append(energy(real_f.to(dev), alpha).float().cpu())
                parts["e_fake"].append(energy(fake, alpha).float().cpu())
                parts["e_ood"].append(energy(noise.to(dev), alpha).float().cpu())
            cat = {k: torch.cat(v) for k, v in parts.items()}
            e_real, e_fake, e_ood = cat["e_real"], cat["e_fake"], cat["e_ood"]
            err, baseline = cat["err"].mean().item(), cat["base"].mean().item()
            swd = swd0 = None
            if res >= metrics.SWD_MIN_RES:
                swd = metrics.sliced_wasserstein(cat["real"], cat["fake"], seed=0)
                swd0 = self._swd_at_init(res, cat["real"], alpha)
        finally:
            for name, m in networks.items():
                m.train(modes[name])
        rnd = lambda t: [round(v, 4) for v in t.tolist()]  # noqa: E731
        record = {
            "images_shown": images_shown,
            "kimg": images_shown / 1000,
            "stage": stage,
            "res": res,
            "alpha": alpha,
            "n": self.n,
            "heldout_first": self.train_count,
            "swd": swd["mean"] if swd else None,
            "swd_levels": swd["levels"] if swd else [],
            "swd_per_level": swd["swd"] if swd else [],
            "swd_at_init": swd0["mean"] if swd0 else None,
            "swd_at_init_per_level": swd0["swd"] if swd0 else [],
            "recon": err,
            "recon_baseline": baseline,
            "recon_ratio": err / max(baseline, 1e-12),
            "energy_real": e_real.mean().item(),
            "energy_generated": e_fake.mean().item(),
            "energy_ood": e_ood.mean().item(),
            "energies": {"real": rnd(e_real), "generated": rnd(e_fake), "ood": rnd(e_ood)},
            "ood_reference": OOD_REFERENCE,
            "seconds": time.perf_counter() - start,
            "time": time.time(),
        }
        append_jsonl(self.run_dir / EVALUATIONS, record, durable=True)
        return record


def summary_line(record: dict) -> str:
    """One line for the console: SWD, reconstruction against baseline, energies."""
    parts = [f"eval {record['res']}px at {record['kimg']:g} kimg:"]
    if record["swd"] is not None:
        parts.append(f"SWD {record['swd']:.1f} (init {record['swd_at_init']:.1f})")
    parts.append(f"recon {record['recon']:.4f} ({record['recon_ratio']:.2f}x baseline)")
    parts.append(
        f"E real {record['energy_real']:.2f} gen {record['energy_generated']:.2f} "
        f"noise {record['energy_ood']:.2f}"
    )
    return " ".join(parts)
