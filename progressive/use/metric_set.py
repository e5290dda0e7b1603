"""The metrics `progressive evaluate` offers, each registered by name (`registry.register`) in
the order the command lists them."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from progressive.metrics import fidelity as metrics
from progressive.metrics import inception, pca, quality
from progressive.model import budget
from progressive.model.sampling import energies, generate_batches, prepare_real
from progressive.run.folder import METRIC_CACHE_NAME
from progressive.use import metric_parts as parts
from progressive.use.registry import Context, record, register

__all__ = ["record"]


def _chunked_mse(ctx: Context, images) -> Tensor:
    """Per-image MSE of the held-out images (as faded) against an iterable of float batches."""
    out, i = [], 0
    for x in images:
        out.append(metrics.reconstruction_error(ctx.real_in[i : i + len(x)], x))
        i += len(x)
    return torch.cat(out)


def _swd_line(rec: dict) -> str:
    levels = zip(rec["levels"], rec["per_level"], strict=True)
    text = "  (" + ", ".join(f"{r}px {v:.4g}" for r, v in levels)
    return text + f"; at initialization {rec['at_init']:.4g})"


@register("swd", _swd_line)
def swd(ctx: Context) -> dict | None:
    run, seed = ctx.run, ctx.options.seed
    if run.res < metrics.SWD_MIN_RES:
        ctx.options.notify(f"swd skipped: needs at least {metrics.SWD_MIN_RES}px, the model is "
                           f"at {run.res}px")
        return None
    # The held-out images' descriptors serve every comparison; generated sets are streamed.
    real = ctx.once("swd-real", lambda: metrics.patch_descriptors(ctx.real_in, seed=2 * seed))

    def against(images) -> dict:
        return metrics.swd_of_descriptors(
            real, metrics.patch_descriptors(images, seed=2 * seed + 1), seed=seed)

    result = against(ctx.samples()["images"])
    # The same measurement for the run's generator as initialised (same seed), the baseline
    # that training should beat.
    initial = parts.initial_generator(run).to(run.device)
    at_init = against(generate_batches(initial, sample_latents(ctx), run.res, run.alpha))
    out = dict(value=result["mean"], levels=result["levels"], per_level=result["swd"],
               at_init=at_init["mean"])
    refined = ctx.refined()
    if refined is not None:
        r = against(refined["images"])
        out.update(ctx.chain_info(), refined=r["mean"], refined_per_level=r["swd"])
    return out


def sample_latents(ctx: Context) -> Tensor:
    gen = torch.Generator().manual_seed(ctx.options.seed)
    return torch.randn(ctx.n, ctx.run.latent, generator=gen)


def _recon_line(rec: dict) -> str:
    fit = rec.get("pca_fit", {})
    how = (f"; fitted on {fit['images']} of {fit.get('of', fit['images'])} images by its "
           f"{fit['method']} matrix within {fit['memory_budget'] / 2**30:.3g} GiB") if fit else ""
    return (f"  (mean-image baseline {rec['mean_image_baseline']:.5g}, PCA with "
            f"{rec['pca_components']} components {rec['pca_baseline']:.5g}{how})")


@register("recon", _recon_line)
def recon(ctx: Context) -> dict:
    run = ctx.run
    mu = ctx.codes()[0]
    err = _chunked_mse(ctx, generate_batches(run.generator, mu, run.res, run.alpha))
    train = ctx.training()
    fit = ctx.baseline_pca()
    step = budget.image_batch(run.res)
    mean = (train or fit)["mean"]
    baseline = _chunked_mse(ctx, (mean.expand(min(step, ctx.n - i), -1, -1, -1)
                                  for i in range(0, ctx.n, step)))
    pca_err = quality.pca_baseline(fit["pca"], ctx.real_in, run.latent)
    return dict(
        value=err.mean().item(), median=err.median().item(), max=err.max().item(),
        mean_image_baseline=baseline.mean().item(), pca_baseline=pca_err.mean().item(),
        pca_components=run.latent,
        pca_fitted_on="training" if train is not None else "held-out",
        pca_fit=pca.describe(fit["pca"], fit["count"]),
        **quality.code_spread(*ctx.codes()),
    )


@register("fid")
def fid(ctx: Context) -> dict | None:
    scores = _fid_kid(ctx)
    return None if scores is None else {"value": scores["fid"]}


@register("kid")
def kid(ctx: Context) -> dict | None:
    scores = _fid_kid(ctx)
    return None if scores is None else {"value": scores["kid"], "std": scores["kid_std"]}


def _fid_kid(ctx: Context) -> dict | None:
    """torch-fidelity's FID and KID, computed once for both; None (one notice) without usable
    Inception weights."""

    def compute() -> dict | None:
        run, opt = ctx.run, ctx.options
        try:
            extractor = inception.load_inception(opt.inception_weights, run.device)
        except inception.InceptionUnavailable as e:
            opt.notify(str(e))
            return None
        cache = inception.real_feature_cache(
            Path(run.run_dir) / METRIC_CACHE_NAME, Path(opt.data), run.res, ctx.n,
            Path(opt.inception_weights),
        )
        f_real = inception.cached_real_features(
            cache, lambda: inception.inception_features(extractor, ctx.real_in)
        )
        f_fake = inception.inception_features(extractor, ctx.samples()["images"])
        return inception.fid_kid(f_real, f_fake, kid_subset_size=min(1000, ctx.n), seed=opt.seed)

    return ctx.once("fid-kid", compute)


def _diversity_line(rec: dict) -> str:
    nn = f"samples {rec['samples']:.4g}, real {rec['real']:.4g}"
    return (f"  (nearest-neighbour RMS distance: {nn}; precision {rec['precision']:.3f}, "
            f"recall {rec['recall']:.3f})")


@register("diversity", _diversity_line)
def diversity(ctx: Context) -> dict:
    fake = ctx.samples()["images"]
    div = metrics.diversity(fake, ctx.real_in)
    precision, recall = quality.precision_recall(ctx.real_in, fake)
    out = dict(value=div["value"], samples=div["samples"], real=div["real"],
               precision=precision, recall=recall)
    refined = ctx.refined()
    if refined is not None:
        r = metrics.diversity(refined["images"], ctx.real_in)
        out.update(ctx.chain_info(), refined=r["value"], refined_samples=r["samples"])
    return out


@register("energy", lambda rec: f"  (samples; real images {rec['real']:.5g})")
def energy(ctx: Context) -> dict:
    run = ctx.run
    e_fake = ctx.samples()["energy"]
    e_real = energies(run.energy, ctx.real, run.alpha)
    out = dict(value=e_fake.mean().item(), std=e_fake.std().item(),
               real=e_real.mean().item(), real_std=e_real.std().item())
    refined = ctx.refined()
    if refined is not None:
        e_ref = refined["energy"]
        out.update(ctx.chain_info(), refined=e_ref.mean().item(), refined_std=e_ref.std().item())
    return out


def _recovery_line(rec: dict) -> str:
    return (f"  MAE on [0, 1] over missing pixels, PSNR {rec['psnr']:.2f} dB "
            f"(mean-colour fill: MAE {rec['mean_colour_mae']:.4f}, "
            f"PSNR {rec['mean_colour_psnr']:.2f} dB; harmonic fill: MAE "
            f"{rec['harmonic_mae']:.4f}, PSNR {rec['harmonic_psnr']:.2f} dB; {rec['occlude']})")


@register("recovery", _recovery_line)
def recovery(ctx: Context) -> dict:
    return parts.recovery(ctx.run, ctx.ds, ctx.real, ctx.options.occlude, ctx.options.seed)


def _cycle(ctx: Context) -> dict:
    run = ctx.run
    return ctx.once("cycle", lambda: quality.synth_cycle(
        run.generator, run.inference, ctx.n, run.latent, run.res, run.alpha, ctx.options.seed
    ))


@register("recon-synth")
def recon_synth(ctx: Context) -> dict:
    mse = _cycle(ctx)["mse"]
    return {"value": mse.mean().item(), "median": mse.median().item()}


@register("latent-recovery", parts.latent_recovery_line)
def latent_recovery(ctx: Context) -> dict:
    run, cycle = ctx.run, _cycle(ctx)
    per_dim = cycle["r2_per_dim"]
    # The same cycle from where the held-out images' codes lie: a high R^2 here and a low one
    # from the prior means the prior's samples miss the codes' region.
    z_fit = quality.sample_code_fit(*ctx.codes(), ctx.n, ctx.options.seed)
    fit = quality.synth_cycle(
        run.generator, run.inference, ctx.n, run.latent, run.res, run.alpha, z=z_fit
    )
    return dict(value=cycle["r2"], r2_per_dim_min=per_dim.min().item(),
                r2_per_dim_median=per_dim.median().item(),
                posterior_std=cycle["posterior_std"], r2_code_fit=fit["r2"])


@register("energy-auroc", parts.energy_auroc_line)
def energy_auroc(ctx: Context) -> dict:
    run, opt = ctx.run, ctx.options
    others: dict[str, Tensor] = {}
    for source in opt.ood:
        others[parts.set_name(source, others)] = parts.other_set(source, run, ctx.n, opt.seed)
    scores = quality.energy_auroc(
        run.energy, run.generator, run.inference, ctx.real, others, ctx.samples()["faded"],
        run.res, run.alpha,
    )
    # The plain baseline: a Gaussian density (probabilistic PCA, as many components as the
    # latent) fitted on training images; none when the training set is gone, as fitting it on
    # the held-out images would flatter it.
    train = ctx.training()
    scores["ppca"] = None
    if train is not None:
        fit, k = train["pca"], run.latent
        inside = quality.ppca_nll(fit, ctx.real_in, k)
        for name, images in others.items():
            outside = quality.ppca_nll(fit, parts.faded(images, run.alpha), k)
            scores["sets"][name]["auroc_ppca"] = quality.auroc(inside, outside)
        scores["ppca"] = {"components": k, "training_images": fit["images"]}
    first = next(iter(scores["sets"].values()))
    now = {"heldout": scores["heldout"]["energy"], "samples": scores["samples"]["energy"]}
    scores["gap"] = quality.energy_gap(now)
    previous = parts.previous_energy(run, ctx.real, ctx.n, opt.seed)
    if previous is not None:
        before = {"heldout": previous["heldout_energy"], "samples": previous["samples_energy"]}
        previous["shift_in_std"] = quality.scale_shift(now["heldout"], before["heldout"])
        previous["offset_shift_in_std"] = quality.offset_shift(now, before)
        previous["gap"] = quality.energy_gap(before)
    return dict(value=first["auroc_energy"], **scores, previous_snapshot=previous)


@register("recon-fit", parts.recon_fit_line)
def recon_fit(ctx: Context) -> dict:
    run = ctx.run
    k = min(ctx.n, parts.RECON_FIT_IMAGES)
    mu = ctx.codes()[0][:k]
    x = prepare_real(ctx.real[:k], run.alpha).float()
    inferred = quality.per_image_mse(quality.decode(run.generator, mu, run.res, run.alpha), x)
    z, fitted = quality.fitted_codes(run.generator, x, mu, run.res, run.alpha)
    # The latent-sized PCA on the same images, so the three figures compare directly.
    pca_err = quality.pca_baseline(ctx.baseline_pca()["pca"], ctx.real_in[:k], run.latent)
    return dict(value=fitted.mean().item(), inferred=inferred.mean().item(),
                pca_baseline=pca_err.mean().item(), images=k,
                codes_moved=(z - mu).norm(dim=1).mean().item(),
                codes_norm=mu.norm(dim=1).mean().item())
