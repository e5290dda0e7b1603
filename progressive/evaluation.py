"""Evaluating a trained run: SWD, reconstruction error, FID, KID, diversity and mean energy
against a dataset, of raw samples and of samples refined by Langevin on the energy, each
appended as one JSON line to the run's metric file (`run_folder.metric_file`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import Tensor

from progressive import metrics
from progressive.checkpoint import LoadedRun
from progressive.data import ImageDataset
from progressive.errors import UserError
from progressive.files import append_jsonl
from progressive.images import to_uint8
from progressive.langevin import Langevin
from progressive.networks import initial_networks
from progressive.run_folder import METRIC_CACHE_NAME, metric_file
from progressive.sampling import energies, prepare_real, reconstruct, sample, sample_energies

METRICS = ("swd", "recon", "fid", "kid", "diversity", "energy", "recovery")


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
) -> dict[str, dict]:
    """Compute the metrics `names` on `n` images of dataset `data` against `n` generated ones,
    append each to the run's `metric-<name>.jsonl`, and return the records by name.

    With a Langevin `chain` of at least one step, swd, diversity and energy are also measured
    on the refined samples (`refined`, beside `value` for the raw ones).
    FID/KID without usable Inception weights are skipped with one notice (via `notify`).
    "recovery" fills the pixels that `occlude` masks (or the dataset's own masks) hide.
    """
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise UserError(
            f"--metrics: unknown {', '.join(unknown)}; choose from {', '.join(METRICS)}"
        )
    ds = ImageDataset(data, run.res)
    n = min(n, len(ds))
    if n < 2:
        raise UserError(f"--data {data} has {len(ds)} image(s); metrics need at least 2")
    real = ds.batch(list(range(n)))
    real_in = to_uint8(prepare_real(real, run.alpha))
    fake = refined = None
    args = (run.generator, n, seed, run.latent, run.res, run.alpha)
    if {"swd", "fid", "kid", "diversity", "energy"} & set(names):
        fake = sample(*args)
    if chain is not None and chain.steps and {"swd", "diversity", "energy"} & set(names):
        refined = sample(*args, energy=run.energy, chain=chain)
    base = {
        "images_shown": run.images_shown,
        "res": run.res,
        "alpha": run.alpha,
        "snapshot": str(run.snapshot),
        "data": str(data),
        "n": n,
    }
    results: dict[str, dict] = {}
    chain_info = {"langevin": chain.as_dict()} if refined is not None else {}

    def record(name: str, value: float, **extra) -> None:
        results[name] = {"metric": name, **base, "value": value, **extra, "time": time.time()}
        append_jsonl(metric_file(run.run_dir, name), results[name])

    if "swd" in names:
        if run.res < metrics.SWD_MIN_RES:
            notify(
                f"swd skipped: needs at least {metrics.SWD_MIN_RES}px, the model is at "
                f"{run.res}px"
            )
        else:
            swd = metrics.sliced_wasserstein(real_in, fake, seed=seed)
            # The same measurement for the run's generator as initialised (same seed), the
            # baseline that training should beat.
            initial = _initial_generator(run.config).to(run.device)
            fake0 = sample(initial, n, seed, run.latent, run.res, run.alpha)
            swd0 = metrics.sliced_wasserstein(real_in, fake0, seed=seed)
            extra = dict(levels=swd["levels"], per_level=swd["swd"], at_init=swd0["mean"])
            if refined is not None:
                swd_r = metrics.sliced_wasserstein(real_in, refined, seed=seed)
                extra.update(chain_info, refined=swd_r["mean"], refined_per_level=swd_r["swd"])
            record("swd", swd["mean"], **extra)
    if "diversity" in names:
        div = metrics.diversity(fake, real_in)
        extra = dict(samples=div["samples"], real=div["real"])
        if refined is not None:
            div_r = metrics.diversity(refined, real_in)
            extra.update(chain_info, refined=div_r["value"], refined_samples=div_r["samples"])
        record("diversity", div["value"], **extra)
    if "energy" in names:
        e_fake = sample_energies(run.energy, fake, run.alpha)
        e_real = energies(run.energy, real, run.alpha)
        extra = dict(
            std=e_fake.std().item(), real=e_real.mean().item(), real_std=e_real.std().item()
        )
        if refined is not None:
            e_ref = sample_energies(run.energy, refined, run.alpha)
            extra.update(chain_info, refined=e_ref.mean().item(), refined_std=e_ref.std().item())
        record("energy", e_fake.mean().item(), **extra)
    if "recon" in names:
        recon = reconstruct(run.generator, run.inference, real, run.res, run.alpha)
        err = metrics.reconstruction_error(real_in, recon)
        train_mean = _training_images(run, run.res, n)
        baseline = metrics.mean_image_baseline(
            train_mean if train_mean is not None else real, real_in
        )
        record(
            "recon",
            err.mean().item(),
            median=err.median().item(),
            max=err.max().item(),
            mean_image_baseline=baseline.mean().item(),
        )
    if "recovery" in names:
        record("recovery", **_recovery(run, ds, real, occlude, seed))
    wanted = [m for m in ("fid", "kid") if m in names]
    if wanted:
        try:
            extractor = metrics.load_inception(inception_weights, run.device)
        except metrics.InceptionUnavailable as e:
            notify(str(e))
        else:
            weights = Path(inception_weights)
            cache = metrics.real_feature_cache(
                Path(run.run_dir) / METRIC_CACHE_NAME, Path(data), run.res, n, weights
            )
            f_real = metrics.cached_real_features(
                cache, lambda: metrics.inception_features(extractor, real_in)
            )
            f_fake = metrics.inception_features(extractor, fake)
            scores = metrics.fid_kid(f_real, f_fake, kid_subset_size=min(1000, n), seed=seed)
            if "fid" in wanted:
                record("fid", scores["fid"])
            if "kid" in wanted:
                record("kid", scores["kid"], std=scores["kid_std"])
    return results


def _recovery(
    run: LoadedRun, ds: ImageDataset, real: Tensor, occlude: str | None, seed: int
) -> dict:
    """The recovery error of the model's completion and of the mean-colour fill."""
    from progressive import inpaint

    if occlude is not None:
        masks = inpaint.occlusion_masks(occlude, seed, len(real), ds.max_res, run.res)
        how = {"occlude": occlude, "mask_seed": seed}
    elif ds.has_masks:
        masks = ds.masks(list(range(len(real))))
        how = {"occlude": ds.meta["masks"].get("kind"), "mask_seed": ds.meta["masks"].get("seed")}
    else:
        raise UserError("--metrics recovery needs --occlude KIND or a dataset with masks")
    model = inpaint.recovery_error(inpaint.complete(run, real, masks), real, masks)
    mean = inpaint.recovery_error(inpaint.mean_colour_fill(real, masks), real, masks)
    return {"value": model["mae"], "psnr": model["psnr"], "mean_colour_mae": mean["mae"],
            "mean_colour_psnr": mean["psnr"], "missing_share": model["missing_share"], **how}


def _initial_generator(cfg: dict) -> torch.nn.Module:
    """The generator exactly as training started it."""
    return initial_networks(cfg)["generator"].eval().requires_grad_(False)


def _training_images(run: LoadedRun, res: int, n: int) -> Tensor | None:
    """Up to `n` images of the run's own training dataset, when it is still there."""
    data = run.config.get("data")
    if not data or not Path(data).is_dir():
        return None
    try:
        ds = ImageDataset(data, res)
    except UserError:
        return None
    return ds.batch(list(range(min(n, len(ds)))))
