"""Evaluating a trained run: SWD, reconstruction error, FID, KID, diversity and mean energy
against a dataset, of raw samples and of samples refined by Langevin on the energy, each
appended as one JSON line to the run's metric file (`run_folder.metric_file`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import Tensor

from progressive.core.errors import UserError
from progressive.core.files import append_jsonl
from progressive.core.images import to_uint8
from progressive.data.reader import ImageDataset
from progressive.metrics import fidelity as metrics
from progressive.metrics import quality
from progressive.model.langevin import Langevin
from progressive.model.networks import build_networks, in_use
from progressive.model.sampling import energies, prepare_real, reconstruct, sample, sample_energies
from progressive.run.checkpoint import LoadedRun, load_weights, read_state
from progressive.run.folder import METRIC_CACHE_NAME, list_snapshots, metric_file, snapshot_dir
from progressive.train import outliers
from progressive.train.pca_path import starting_networks
from progressive.use.generate import load_images

METRICS = ("swd", "recon", "fid", "kid", "diversity", "energy", "recovery",
           *quality.QUALITY_METRICS)
PCA_TRAINING_IMAGES = 10000  # training images the recon metric's PCA baseline is fitted on
NOISE_PREFIX = "noise:"  # --ood noise:KIND, the built-in sets of images no dataset holds
RECON_FIT_IMAGES = 200  # held-out images whose codes recon-fit fits (300 generator steps each)


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
    if "energy-auroc" in names and not ood:
        raise UserError(
            "--metrics energy-auroc needs --ood DIR (a dataset or image folder) or --ood noise:flat"
        )
    fake = refined = None
    args = (run.generator, n, seed, run.latent, run.res, run.alpha)
    if {"swd", "fid", "kid", "diversity", "energy", "energy-auroc"} & set(names):
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
    cached: dict[str, object] = {}

    def training_images() -> Tensor | None:
        """Up to PCA_TRAINING_IMAGES of the run's training images, read once for the recon and
        energy-auroc baselines; None when the training dataset is gone."""
        if "train" not in cached:
            cached["train"] = _training_images(run, run.res, PCA_TRAINING_IMAGES)
        return cached["train"]

    def training_pca() -> dict[str, Tensor] | None:
        """Their principal components, fitted once."""
        if "pca" not in cached:
            train = training_images()
            cached["pca"] = None if train is None else quality.principal_components(train)
        return cached["pca"]

    def baseline_pca() -> dict[str, Tensor]:
        """The reconstruction baselines' components: the training images' (the held-out
        images' when the training set is gone, which flatters the baseline)."""
        fit = training_pca()
        return quality.principal_components(real) if fit is None else fit

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
            initial = _initial_generator(run).to(run.device)
            fake0 = sample(initial, n, seed, run.latent, run.res, run.alpha)
            swd0 = metrics.sliced_wasserstein(real_in, fake0, seed=seed)
            extra = dict(levels=swd["levels"], per_level=swd["swd"], at_init=swd0["mean"])
            if refined is not None:
                swd_r = metrics.sliced_wasserstein(real_in, refined, seed=seed)
                extra.update(chain_info, refined=swd_r["mean"], refined_per_level=swd_r["swd"])
            record("swd", swd["mean"], **extra)
    if "diversity" in names:
        div = metrics.diversity(fake, real_in)
        precision, recall = quality.precision_recall(real_in, fake)
        extra = dict(samples=div["samples"], real=div["real"], precision=precision, recall=recall)
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
    # The held-out images' codes, shared by the recon and latent-recovery figures.
    codes = None
    if {"recon", "latent-recovery", "recon-fit"} & set(names):
        codes = quality.posterior(run.inference, real, run.alpha)
    if "recon" in names:
        recon = reconstruct(run.generator, run.inference, real, run.res, run.alpha)
        err = metrics.reconstruction_error(real_in, recon)
        train = training_images()
        baseline = metrics.mean_image_baseline(train if train is not None else real, real_in)
        pca = quality.pca_baseline(baseline_pca(), real_in, run.latent)
        record(
            "recon",
            err.mean().item(),
            median=err.median().item(),
            max=err.max().item(),
            mean_image_baseline=baseline.mean().item(),
            pca_baseline=pca.mean().item(),
            pca_components=run.latent,
            pca_fitted_on="training" if train is not None else "held-out",
            **quality.code_spread(*codes),
        )
    if "recon-fit" in names:
        k = min(n, RECON_FIT_IMAGES)
        x, mu = prepare_real(real[:k], run.alpha).float(), codes[0][:k]
        inferred = quality.per_image_mse(quality.decode(run.generator, mu, run.res, run.alpha), x)
        z, fitted = quality.fitted_codes(run.generator, x, mu, run.res, run.alpha)
        # The latent-sized PCA on the same images, so the three figures compare directly.
        pca = quality.pca_baseline(baseline_pca(), real_in[:k], run.latent)
        record(
            "recon-fit",
            fitted.mean().item(),
            inferred=inferred.mean().item(),
            pca_baseline=pca.mean().item(),
            images=k,
            codes_moved=(z - mu).norm(dim=1).mean().item(),
            codes_norm=mu.norm(dim=1).mean().item(),
        )
    if "recovery" in names:
        record("recovery", **_recovery(run, ds, real, occlude, seed))
    if {"recon-synth", "latent-recovery"} & set(names):
        cycle = quality.synth_cycle(
            run.generator, run.inference, n, run.latent, run.res, run.alpha, seed
        )
        if "recon-synth" in names:
            record("recon-synth", cycle["mse"].mean().item(), median=cycle["mse"].median().item())
        if "latent-recovery" in names:
            per_dim = cycle["r2_per_dim"]
            # The same cycle from where the held-out images' codes lie: a high R^2 here and a
            # low one from the prior means the prior's samples miss the codes' region.
            z_fit = quality.sample_code_fit(*codes, n, seed)
            fit = quality.synth_cycle(
                run.generator, run.inference, n, run.latent, run.res, run.alpha, z=z_fit
            )
            record(
                "latent-recovery",
                cycle["r2"],
                r2_per_dim_min=per_dim.min().item(),
                r2_per_dim_median=per_dim.median().item(),
                posterior_std=cycle["posterior_std"],
                r2_code_fit=fit["r2"],
            )
    if "energy-auroc" in names:
        others: dict[str, Tensor] = {}
        for source in ood:
            others[_set_name(source, others)] = _other_set(source, run, n, seed)
        scores = quality.energy_auroc(
            run.energy, run.generator, run.inference, real, others, fake, run.res, run.alpha
        )
        # The plain baseline: a Gaussian density (probabilistic PCA, as many components as the
        # latent) fitted on training images; none when the training set is gone, as fitting
        # it on the held-out images would flatter it.
        pca = training_pca()
        scores["ppca"] = None
        if pca is not None:
            inside = quality.ppca_nll(pca, prepare_real(real, run.alpha), run.latent)
            for name, images in others.items():
                outside = quality.ppca_nll(pca, prepare_real(images, run.alpha), run.latent)
                scores["sets"][name]["auroc_ppca"] = quality.auroc(inside, outside)
            scores["ppca"] = {"components": run.latent, "training_images": len(training_images())}
        first = next(iter(scores["sets"].values()))
        now = {"heldout": scores["heldout"]["energy"], "samples": scores["samples"]["energy"]}
        scores["gap"] = quality.energy_gap(now)
        previous = _previous_energy(run, real, n, seed)
        if previous is not None:
            before = {"heldout": previous["heldout_energy"], "samples": previous["samples_energy"]}
            previous["shift_in_std"] = quality.scale_shift(now["heldout"], before["heldout"])
            previous["offset_shift_in_std"] = quality.offset_shift(now, before)
            previous["gap"] = quality.energy_gap(before)
        record("energy-auroc", first["auroc_energy"], **scores, previous_snapshot=previous)

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
    """The recovery error of the model's completion, of the mean-colour fill and of the
    harmonic fill."""
    from progressive.use import inpaint

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
    harmonic = inpaint.recovery_error(inpaint.harmonic_fill(real, masks), real, masks)
    return {"value": model["mae"], "psnr": model["psnr"], "mean_colour_mae": mean["mae"],
            "mean_colour_psnr": mean["psnr"], "harmonic_mae": harmonic["mae"],
            "harmonic_psnr": harmonic["psnr"], "missing_share": model["missing_share"], **how}


def _other_set(source: str, run: LoadedRun, n: int, seed: int) -> Tensor:
    """The `--ood` set `source` as uint8 images: `noise:KIND` is built in (see
    progressive.train.outliers), anything else a dataset or image folder."""
    kind = source.removeprefix(NOISE_PREFIX)
    if kind == source or Path(source).exists():
        return load_images(source, run.res, run.config.schedule.max_res, n, spread=True)[1]
    if kind not in outliers.KINDS:
        known = ", ".join(NOISE_PREFIX + k for k in outliers.KINDS)
        raise UserError(f"--ood {source}: unknown noise kind; use one of {known}")
    return outliers.noise_set(kind, n, run.res, seed)


def _set_name(source: str, taken: dict) -> str:
    name, i = Path(source).name or str(source), 2
    while name in taken:
        name, i = f"{Path(source).name}-{i}", i + 1
    return name


def _previous_energy(run: LoadedRun, real: Tensor, n: int, seed: int) -> dict | None:
    """Mean and std of the held-out energies, and of that snapshot's own samples' (`n`, the
    same latents as now), under the run's snapshot before this one (not the one at
    initialization), to see whether the energy's scale holds still."""
    earlier = [s for s in list_snapshots(run.run_dir) if s.name < Path(run.snapshot).name]
    earlier = [s for s in earlier if read_state(s)["images_shown"] > 0]
    if not earlier:
        return None
    nets = build_networks(run.config.networks, run.config.schedule.max_res,
                          run.config.optim.half_lives())
    load_weights(earlier[-1], nets)
    energy = in_use(nets, "energy").to(run.device).eval().requires_grad_(False)
    generator = in_use(nets, "generator").to(run.device).eval().requires_grad_(False)
    values = energies(energy, real, run.alpha)
    fake = sample(generator, n, seed, run.latent, run.res, run.alpha)
    on_samples = energies(energy, fake, run.alpha)  # as energy_auroc scores the samples now
    return {
        "snapshot": str(earlier[-1]),
        "images_shown": read_state(earlier[-1])["images_shown"],
        "heldout_energy": {"mean": float(values.mean()), "std": float(values.std())},
        "samples_energy": {"mean": float(on_samples.mean()), "std": float(on_samples.std())},
    }


def quality_summary(rec: dict) -> str:
    """The details of a quality metric's record in one line, for the command's output."""
    name = rec["metric"]
    if name == "latent-recovery":
        return (
            f"  (R^2; per dimension min {rec['r2_per_dim_min']:.3g}, median "
            f"{rec['r2_per_dim_median']:.3g}; from the codes' Gaussian fit "
            f"{rec['r2_code_fit']:.3g})"
        )
    if name == "recon-fit":
        return (
            f"  (MSE of codes fitted per image, {rec['images']} images; from the inference "
            f"model's codes {rec['inferred']:.4g}, the latent-sized PCA's "
            f"{rec['pca_baseline']:.4g}; the fitted codes moved "
            f"{rec['codes_moved']:.3g} from codes of length {rec['codes_norm']:.3g})"
        )
    if name == "energy-auroc":
        held = rec["heldout"]["energy"]
        parts = [
            f"held-out energy {held['mean']:.4g} ± {held['std']:.3g}",
            f"samples {rec['samples']['energy']['mean']:.4g}",
        ]
        for set_name, s in rec["sets"].items():
            parts.append(
                f"{set_name}: energy {s['energy']['mean']:.4g}, AUROC by energy "
                f"{s['auroc_energy']:.3f} / KL {s['auroc_kl']:.3f} / recon {s['auroc_recon']:.3f}"
                + (f" / PPCA {s['auroc_ppca']:.3f}" if "auroc_ppca" in s else "")
            )
        prev = rec.get("previous_snapshot")
        if prev:
            parts.append(
                f"held-out energy at {prev['images_shown']} images "
                f"{prev['heldout_energy']['mean']:.4g}, a shift of "
                f"{prev['shift_in_std']:.2f} standard deviations; its midpoint to the samples "
                f"moved {prev['offset_shift_in_std']:.2f}, their gap {prev['gap']:.4g} -> "
                f"{rec['gap']:.4g}"
            )
        return "  (" + "; ".join(parts) + ")"
    return ""


def _initial_generator(run: LoadedRun) -> torch.nn.Module:
    """The generator exactly as training started it: a PCA path's from the run's first
    snapshot while it is kept (its fit needs the training data, which may have moved)."""
    first = snapshot_dir(run.run_dir, 0)
    cfg = run.config
    if cfg.networks.pca_path and (first / "generator.safetensors").exists():
        built = build_networks(cfg.networks, cfg.schedule.max_res, cfg.optim.half_lives())
        networks = {"generator": built["generator"]}
        load_weights(first, networks)
    else:
        networks = starting_networks(run.config)
    return networks["generator"].eval().requires_grad_(False)


def _training_images(run: LoadedRun, res: int, n: int) -> Tensor | None:
    """Up to `n` images of the run's own training dataset, when it is still there."""
    data = run.config.data.path
    if not data or not Path(data).is_dir():
        return None
    try:
        ds = ImageDataset(data, res)
    except UserError:
        return None
    return ds.batch(list(range(min(n, len(ds)))))
