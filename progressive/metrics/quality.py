"""What the triangle claims, measured: faithful inference, a well-formed energy, diverse samples.

- `pca_baseline`: reconstruction error of held-out images by PCA fitted on training images,
  with as many components as the latent: the linear encoder-decoder a model must beat.
- `code_spread`: where the held-out images' codes sit against the prior (the mean code's
  length, the spread per dimension, the aggregate posterior's KL): codes that drift off the
  prior together leave the prior's samples to a region reconstruction never trains.
- `synth_cycle`: z ~ N(0, I), x = g(z), mu = q(x); the error of g(mu) against x
  (reconstruction of synthesized data) and R^2 of mu against z (latent recovery); the same
  with z drawn from `code_fit`, the Gaussian of the real images' codes, tells a generator that
  the inference model cannot invert from a prior whose samples fall where no real code lies.
- `energy_auroc`: how well the energy (low = data-like) tells held-out images of the training
  distribution from another set, beside the same AUROC by the inference model's KL to the
  prior and by reconstruction error, so one sees what the energy adds; `ppca_nll` gives the
  plain baseline, a Gaussian density with as many components as the latent.
- `diversity`: mean nearest-neighbour distance among samples against the same among as many
  real images, and k-NN precision and recall (Kynkäänniemi et al. 2019), both in pixel space
  at the model's resolution (computable offline, no pretrained features).

Images are uint8 or float in [-1, 1] (N, 3, R, R), as in `progressive.core.images`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from progressive.core.images import to_float, to_uint8
from progressive.metrics import pca
from progressive.model import budget
from progressive.model.latents import marginal_kl
from progressive.model.sampling import energies, prepare_real

QUALITY_METRICS = ("recon-synth", "latent-recovery", "energy-auroc", "recon-fit")


# --------------------------------------------------------------------------- small helpers


def _device(net: torch.nn.Module) -> torch.device:
    return next(net.parameters()).device


@torch.no_grad()
def _batched(fn, x: Tensor, batch: int) -> Tensor | tuple[Tensor, ...]:
    """fn over `x` in batches on fn's device, results concatenated on the CPU."""
    outs = [fn(x[i : i + batch]) for i in range(0, len(x), batch)]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat([o[k].cpu() for o in outs]) for k in range(len(outs[0])))
    return torch.cat([o.cpu() for o in outs])


def posterior(inference: torch.nn.Module, images: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """(mu, logvar) of q(z|x) for each image, on the CPU."""
    dev = _device(inference)
    cost = budget.per_image("encode", images.shape[-1], alpha, inference=inference)
    fn = lambda b: inference(prepare_real(b, alpha).to(dev), alpha)  # noqa: E731
    return _batched(fn, images, budget.batch_for(cost))


def decode(generator: torch.nn.Module, z: Tensor, res: int, alpha: float) -> Tensor:
    """g(z) as float images in [-1, 1] (N, 3, res, res), on the CPU."""
    dev = _device(generator)
    cost = budget.per_image("generate", res, alpha, generator=generator, latent=z.shape[1])
    return _batched(lambda b: generator(b.to(dev), res, alpha).float(), z, budget.batch_for(cost))


def per_image_mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error per image in the [-1, 1] range, both rounded to uint8 first (images
    are measured as they would be saved)."""
    return (to_float(to_uint8(a)) - to_float(to_uint8(b))).square().flatten(1).mean(1)


def kl_per_image(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(q(z|x) || N(0, I)) per image, summed over latent dimensions (N,)."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(1)


# --------------------------------------------------------------------------- reconstruction


def code_spread(mu: Tensor, logvar: Tensor) -> dict:
    """The codes of a set of images against N(0, I): the length of their mean (0 for the
    prior), the median over dimensions of their standard deviation (1 for the prior) and the
    KL of their diagonal Gaussian fit, mu's spread plus the mean posterior variance, to N(0, I)
    (summed over dimensions; 0 when the aggregate posterior's moments match the prior's)."""
    mu, logvar = mu.double(), logvar.double()
    mean, cov = code_fit(mu, logvar)
    full_kl = 0.5 * (torch.trace(cov) + mean @ mean - len(mean) - torch.logdet(cov))
    return {
        "codes_mean_norm": mu.mean(0).norm().item(),
        "codes_std_median": mu.std(0).median().item(),
        "codes_marginal_kl": marginal_kl(mu, logvar).item(),
        "codes_full_kl": full_kl.item(),
    }


def code_fit(mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and full covariance (float64) of a Gaussian fitted to a set of codes: mu's mean,
    and mu's covariance plus the mean posterior variance on the diagonal. Unlike the
    diagonal fit it sees codes that keep unit spread per dimension but crowd into a few
    directions together, which leaves most of the prior's volume unused."""
    mu, logvar = mu.double(), logvar.double()
    cov = torch.cov(mu.T).reshape(mu.shape[1], mu.shape[1]) if len(mu) > 1 else 0.0
    # A floor far below any posterior variance keeps the fit invertible when there are fewer
    # codes than dimensions and the posteriors are sharp.
    return mu.mean(0), cov + torch.diag(logvar.exp().mean(0) + 1e-6)


def sample_code_fit(mu: Tensor, logvar: Tensor, n: int, seed: int = 0) -> Tensor:
    """`n` seeded draws (float32) from the Gaussian `code_fit` fits to the codes."""
    mean, cov = code_fit(mu, logvar)
    noise = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed))
    return (mean + noise.double() @ torch.linalg.cholesky(cov).T).float()


def fitted_codes(
    generator: torch.nn.Module, images: Tensor, mu: Tensor, res: int, alpha: float,
    steps: int = 300, lr: float = 0.05,
) -> tuple[Tensor, Tensor]:
    """Codes fitted to each image directly: Adam on ||g(z) - x||^2 from the inference model's
    `mu`, the generator fixed. Returns (codes, per-image MSE of g(codes)). How far this falls
    below the MSE of g(mu) is what the inference model leaves of the generator's reach.
    Batches sized by the memory budget; each code's steps do not depend on the others'."""
    dev = _device(generator)
    cost = budget.per_image("generate", res, alpha, generator=generator, latent=mu.shape[1])
    step = budget.batch_for(cost)
    codes = []
    for i in range(0, len(mu), step):
        x = images[i : i + step].float().to(dev)
        z = mu[i : i + step].detach().clone().to(dev).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                loss = (generator(z, res, alpha).float() - x).square().flatten(1).mean(1).sum()
                # The gradient reaches z only: the generator's own gradients stay untouched.
                (z.grad,) = torch.autograd.grad(loss, [z])
                opt.step()
        codes.append(z.detach().cpu())
    z = torch.cat(codes)
    with torch.no_grad():
        err = per_image_mse(decode(generator, z, res, alpha), images.float())
    return z, err


def principal_components(train: Tensor, components: int | None = None) -> dict[str, Tensor]:
    """Mean (1, D), principal directions (orthonormal rows, the top `components` or all) and
    the variances along every direction, of images held in memory (float64); `pca.fit` is the
    same within a memory budget, for large images.

    Eigen-decomposes the smaller of the Gram and covariance matrices (the same nonzero
    spectrum): images by images below as many images as pixel values, else pixels by pixels."""
    x = to_float(train).flatten(1).double()
    n, d = x.shape
    mean = x.mean(0, keepdim=True)
    centred = x - mean
    keep = min(n, d) if components is None else components
    if n <= d:
        values, vectors = torch.linalg.eigh(centred @ centred.T)
        basis = centred.T @ vectors.flip(1)[:, :keep]
        basis = (basis / basis.norm(dim=0).clamp_min(1e-12)).T
    else:
        values, vectors = torch.linalg.eigh(centred.T @ centred)
        basis = vectors.flip(1)[:, :keep].T
    variance = values.flip(0).clamp_min(0) / max(n - 1, 1)
    return {"mean": mean, "basis": basis, "variance": variance}


def ppca_noise(fit: dict, components: int) -> Tensor:
    """The probabilistic PCA's noise variance with `components` kept: the variance left over,
    spread over every pixel value not kept (directions beyond the training images' count have
    none)."""
    variance, dims = fit["variance"], fit["mean"].shape[-1]
    return ((variance.sum() - variance[:components].sum()) / (dims - components)).clamp_min(1e-12)


def pca_baseline(fit: dict, heldout: Tensor, components: int) -> Tensor:
    """MSE per held-out image of its projection on the top `components` principal components
    of `fit` (from `principal_components` of training images; mean included): the linear
    baseline of the same code size. Chunk by chunk, so any number of images fits."""
    k = pca.usable(fit, components)
    out = []
    for part in pca.chunks(heldout):
        rec = pca.back(fit, pca.coefficients(fit, part, k))
        rec = rec.float().view(to_float(part).shape).clamp(-1, 1)
        out.append(per_image_mse(part, rec))
    return torch.cat(out)


def ppca_nll(fit: dict, images: Tensor, components: int) -> Tensor:
    """Negative log-likelihood per image, up to a constant shared by all images, under the
    probabilistic PCA (Tipping and Bishop 1999) of `components` components of `fit` (from
    `principal_components`): the plain Gaussian density an energy of the same data should beat.

    The discarded directions share one variance, their mean; an image's NLL is half its
    Mahalanobis length in the kept directions plus its residual over that variance."""
    variance = fit["variance"]
    k = pca.usable(fit, components)
    rest = ppca_noise(fit, k)
    out = []
    for part in pca.chunks(images):
        length = (to_float(part).flatten(1).double() - fit["mean"]).square().sum(1)
        proj = pca.coefficients(fit, part, k)
        kept = (proj.square() * (1.0 / variance[:k].clamp_min(1e-12) - 1.0 / rest)).sum(1)
        out.append(0.5 * (kept + length / rest))
    return torch.cat(out)


def r_squared(target: Tensor, prediction: Tensor) -> float:
    """Coefficient of determination of `prediction` for `target` (N, D), pooled over
    dimensions: 1 - sum (t - p)^2 / sum (t - mean t)^2. 1 is perfect, 0 the per-dimension mean,
    below 0 worse than the mean."""
    t, p = target.double(), prediction.double()
    residual = (t - p).square().sum()
    total = (t - t.mean(0, keepdim=True)).square().sum()
    return float(1.0 - residual / total.clamp_min(1e-12))


def synth_cycle(
    generator: torch.nn.Module,
    inference: torch.nn.Module,
    n: int,
    latent: int,
    res: int,
    alpha: float,
    seed: int = 0,
    z: Tensor | None = None,
) -> dict:
    """z ~ N(0, I) (seeded; or the given `z`), x = g(z), (mu, logvar) = q(x), x' = g(mu).

    Returns `{"mse": per-image MSE of x' against x (N,), "r2": R^2 of mu against z,
    "r2_per_dim": (latent,), "posterior_std": mean sigma of q(x)}`."""
    if z is None:
        z = torch.randn(n, latent, generator=torch.Generator().manual_seed(seed))
    x = decode(generator, z, res, alpha)
    mu, logvar = posterior(inference, x, alpha)
    x_rec = decode(generator, mu, res, alpha)
    zd, md = z.double(), mu.double()
    per_dim = 1 - (zd - md).square().sum(0) / (zd - zd.mean(0)).square().sum(0).clamp_min(1e-12)
    return {
        "mse": per_image_mse(x, x_rec),
        "r2": r_squared(z, mu),
        "r2_per_dim": per_dim.float(),
        "posterior_std": float(torch.exp(0.5 * logvar).mean()),
    }


# --------------------------------------------------------------------------- energy


def scale_shift(now: dict, before: dict) -> float:
    """How far the mean energy of the same images moved between two snapshots, in standard
    deviations of the energies now (`now`, `before`: {"mean", "std"}); small = a stable scale."""
    return abs(now["mean"] - before["mean"]) / max(now["std"], 1e-12)


def offset_shift(now: dict, before: dict) -> float:
    """How far the energy's offset moved between two snapshots: the midpoint of the held-out
    images' and the samples' mean energies, in standard deviations of the held-out energies
    now (`now`, `before`: {"heldout": {"mean", "std"}, "samples": {"mean"}}). An energy whose
    gap to the samples closes as they improve moves its held-out mean (`scale_shift`) without
    moving this; a wandering constant moves both alike."""
    return abs(_midpoint(now) - _midpoint(before)) / max(now["heldout"]["std"], 1e-12)


def _midpoint(e: dict) -> float:
    return 0.5 * (e["heldout"]["mean"] + e["samples"]["mean"])


def energy_gap(e: dict) -> float:
    """The samples' mean energy over the held-out images' ({"heldout", "samples"} spreads)."""
    return e["samples"]["mean"] - e["heldout"]["mean"]


def auroc(inside: Tensor, outside: Tensor) -> float:
    """Area under the ROC curve of telling `outside` from `inside` by a score that should be
    LOWER inside (energy, KL, error): P(score_in < score_out) + P(tie) / 2, by ranks."""
    a, b = inside.double().flatten(), outside.double().flatten()
    if len(a) == 0 or len(b) == 0:
        raise ValueError("AUROC needs at least one score on each side")
    both = torch.cat([a, b])
    order = both.argsort()
    ranks = torch.empty_like(both)
    ranks[order] = torch.arange(1, len(both) + 1, dtype=both.dtype)
    # Average the ranks of ties so equal scores count one half.
    uniq, inverse = both.unique(return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=both.dtype).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(uniq), dtype=both.dtype).index_add_(0, inverse, torch.ones_like(both))
    ranks = (sums / counts)[inverse]
    rank_out = ranks[len(a) :].sum()
    u = rank_out - len(b) * (len(b) + 1) / 2  # pairs where the outside score is larger
    return float(u / (len(a) * len(b)))


def _spread(values: Tensor) -> dict:
    return {"mean": float(values.mean()), "std": float(values.std()) if len(values) > 1 else 0.0}


def image_scores(
    energy: torch.nn.Module,
    generator: torch.nn.Module,
    inference: torch.nn.Module,
    images: Tensor,
    res: int,
    alpha: float,
) -> dict[str, Tensor]:
    """Per-image energy, KL of q(z|x) to the prior, and reconstruction error g(mu(x)), a
    budget-sized chunk of images at a time."""
    mu, logvar = posterior(inference, images, alpha)
    step = budget.image_batch(res)
    recon = [
        per_image_mse(prepare_real(images[i : i + step], alpha),
                      decode(generator, mu[i : i + step], res, alpha))
        for i in range(0, len(images), step)
    ]
    return {
        "energy": energies(energy, images, alpha),
        "kl": kl_per_image(mu, logvar),
        "recon": torch.cat(recon),
    }


def energy_auroc(
    energy: torch.nn.Module,
    generator: torch.nn.Module,
    inference: torch.nn.Module,
    heldout: Tensor,
    others: dict[str, Tensor],
    samples: Tensor,
    res: int,
    alpha: float,
) -> dict:
    """AUROC of held-out images against each set of `others` by energy, by KL and by
    reconstruction error, with the mean and std of every set's energy and of the samples'
    (`samples`: images, or their energies already scored as images are (N,)).

    Returns `{"heldout": {...}, "samples": {...}, "sets": {name: {"auroc_energy",
    "auroc_kl", "auroc_recon", "energy": {...}}}}`."""
    inside = image_scores(energy, generator, inference, heldout, res, alpha)
    out = {
        "heldout": {"energy": _spread(inside["energy"]), "kl": _spread(inside["kl"])},
        "samples": {"energy": _spread(
            samples if samples.ndim == 1 else energies(energy, samples, alpha)
        )},
        "sets": {},
    }
    for name, images in others.items():
        s = image_scores(energy, generator, inference, images, res, alpha)
        out["sets"][name] = {
            "n": len(images),
            "auroc_energy": auroc(inside["energy"], s["energy"]),
            "auroc_kl": auroc(inside["kl"], s["kl"]),
            "auroc_recon": auroc(inside["recon"], s["recon"]),
            "energy": _spread(s["energy"]),
        }
    return out


# --------------------------------------------------------------------------- diversity


def _pairwise(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances between rows of a (N, D) and b (M, D), float64."""
    return torch.cdist(a.double(), b.double())


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """k-NN precision (share of samples inside the real images' k-NN balls) and recall (share
    of real images inside the samples' balls), in pixel space."""
    r, f = to_float(real).flatten(1), to_float(fake).flatten(1)

    def radii(x: Tensor) -> Tensor:
        d = _pairwise(x, x)
        d.fill_diagonal_(float("inf"))
        return d.kthvalue(k, dim=1).values

    rr, rf = radii(r), radii(f)
    d_fr = _pairwise(f, r)  # (fake, real)
    precision = (d_fr <= rr[None, :]).any(1).double().mean()
    recall = (d_fr.T <= rf[None, :]).any(1).double().mean()
    return float(precision), float(recall)
