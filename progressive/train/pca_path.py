"""The principal-component path of the generator and inference model: fitted once on the
training images before the first step, then fixed (see `layers.PrincipalPath`).

In a short run the convolutional networks do not reach the reconstruction error of as many
principal components as the latent has dimensions, even trained as a plain autoencoder
(bench_quality's autoencoder rows), while the components are solved exactly. Fitting them
directly and letting the networks learn the remainder starts reconstruction where the linear
code ends.
"""

from __future__ import annotations

import torch
from torch import Tensor

from progressive.config.sections import Config
from progressive.core.errors import UserError
from progressive.core.resolutions import PCA_PATH_MAX_RES
from progressive.data.reader import ImageDataset
from progressive.metrics.quality import ppca_noise, principal_components
from progressive.metrics.stage import split_counts
from progressive.model.networks import initial_networks

FIT_IMAGES = 4096  # at most this many training images, evenly spread over the dataset


def fit(images: Tensor, components: int) -> dict[str, Tensor]:
    """Mean, top principal directions (orthonormal rows), their standard deviations and the
    probabilistic PCA's posterior log-variances log(noise / variance) of uint8 images (N, 3,
    r, r), in float32 (`quality_metrics.principal_components` and `ppca_noise`)."""
    n, d = len(images), images[0].numel()
    if components > d:
        raise ValueError(f"{components} principal components of {d} pixel values")
    if n <= components:
        raise ValueError(
            f"{components} principal components need at least {components + 1} images, got {n}"
        )
    pca = principal_components(images, components)
    variance = pca["variance"][:components].clamp_min(1e-8)
    return {
        "mean": pca["mean"][0].float(),
        "basis": pca["basis"].float(),
        "scale": variance.sqrt().float(),
        "logvar": (ppca_noise(pca, components).clamp_min(1e-8) / variance).log().float(),
    }


def spread_indices(count: int, n: int = FIT_IMAGES) -> list[int]:
    """`n` indices spread evenly over `count` (all of them if fewer): datasets stored class by
    class are sampled across classes."""
    if count <= n:
        return list(range(count))
    return torch.linspace(0, count - 1, n).round().long().unique().tolist()


@torch.no_grad()
def install(networks: dict[str, torch.nn.Module], fitted: dict[str, Tensor]) -> None:
    """Set the fitted components in every generator and inference model of `networks` (the
    averages included) and zero their convolutional outputs, so each starts as the linear
    model exactly and the averages equal their networks."""
    for name, net in networks.items():
        pca = getattr(net, "pca", None)
        if pca is None:
            continue
        for key, value in fitted.items():
            getattr(pca, key).copy_(value)
        if name.startswith("generator"):
            outputs = list(net.to_rgb.values())
        else:
            outputs = [net.trunk.blocks["4"].dense1]
        for layer in outputs:
            layer.weight.zero_()
            layer.bias.zero_()


def training_fit(cfg: Config) -> dict[str, Tensor]:
    """`fit` on the run's training images (never its held-out ones) at the path's resolution."""
    dataset = ImageDataset(cfg.data.path, min(cfg.schedule.max_res, PCA_PATH_MAX_RES))
    train_count = check_data(cfg, len(dataset), dataset.has_masks, cfg.data.path)
    return fit(dataset.batch(spread_indices(train_count)), cfg.networks.latent)


def check_data(cfg: Config, count: int, has_masks: bool, where: str) -> int:
    """One-line errors, before anything is written, for data the path cannot be fitted on:
    missing pixels, or no more training images than latent dimensions; else the number of
    training images."""
    if has_masks:
        raise UserError(f"{where} has missing pixels; --pca-path needs complete images")
    train_count, _ = split_counts(count, cfg.data.holdout)
    latent = cfg.networks.latent
    if train_count <= latent:
        raise UserError(
            f"networks.pca_path with --latent {latent} needs more than {latent} training "
            f"images; {where} has {train_count}"
        )
    return train_count


def starting_networks(cfg: Config) -> dict[str, torch.nn.Module]:
    """The networks exactly as a run started them: `initial_networks`, with the principal
    components fitted and installed where the configuration asks for them."""
    networks = initial_networks(cfg)
    if cfg.networks.pca_path:
        install(networks, training_fit(cfg))
    return networks
