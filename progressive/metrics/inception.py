"""FID and KID: torch-fidelity's, on the features of its InceptionV3 loaded from a local
weights file (nothing is downloaded), with the real images' features cached per dataset.

Image sets are (N, 3, H, W) tensors, uint8 in [0, 255] or float in [-1, 1], measured as they
would be saved (`progressive.metrics.fidelity`'s conventions).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.metric_fid import (
    KEY_METRIC_FID,
    fid_features_to_statistics,
    fid_statistics_to_metric,
)
from torch_fidelity.metric_kid import (
    KEY_METRIC_KID_MEAN,
    KEY_METRIC_KID_STD,
    kid_features_to_metric,
)

from progressive.core.errors import UserError
from progressive.core.files import atomic_write, first_line
from progressive.core.images import to_uint8


class InceptionUnavailable(UserError):
    """No usable Inception weights: FID and KID are skipped, other metrics still run."""


@contextmanager
def _weights_only_loads():
    # torch-fidelity loads its weights with weights_only=False; force the safe loader anyway.
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def load_inception(weights: str | os.PathLike | None, device: str | torch.device = "cpu"):
    """torch-fidelity's InceptionV3 (2048-d pool features) from a local weights file.

    torch-fidelity would download the weights; here they must be given as a file, e.g.
    `weights-inception-2015-12-05-6726825d.pth` from torch-fidelity's releases. Raises
    `InceptionUnavailable` (one line) when there is no path or the file does not load.
    """
    if weights is None:
        raise InceptionUnavailable(
            "FID/KID skipped: no Inception weights (pass --inception-weights PATH to "
            "torch-fidelity's weights-inception-2015-12-05-6726825d.pth)"
        )
    path = Path(weights)
    if not path.is_file():
        raise InceptionUnavailable(f"FID/KID skipped: --inception-weights {path} does not exist")

    try:
        with _weights_only_loads():
            model = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
            )
    except Exception as e:  # any failure to read the file means: no FID/KID this time
        raise InceptionUnavailable(
            f"FID/KID skipped: --inception-weights {path} is not a usable InceptionV3 "
            f"state dict ({first_line(e)[:120]})"
        ) from None
    return model.to(device).eval()


FeatureFn = Callable[[Tensor], Tensor]


@torch.no_grad()
def inception_features(
    extractor: FeatureFn, images: Tensor | Iterable[Tensor], batch: int = 64
) -> np.ndarray:
    """Features (N, F) float64 of uint8 (or [-1, 1] float) images, `batch` images at a time.

    `extractor` takes uint8 (B, 3, H, W) and returns (B, F) or a 1-tuple of it, like
    torch-fidelity's feature extractors.
    """
    params = list(extractor.parameters()) if hasattr(extractor, "parameters") else []
    device = params[0].device if params else "cpu"
    batches = [images] if isinstance(images, Tensor) else images
    feats = []
    for big in batches:
        for start in range(0, len(big), batch):
            out = extractor(to_uint8(big[start : start + batch]).to(device))
            out = out[0] if isinstance(out, tuple) else out
            feats.append(out.double().cpu())
    return torch.cat(feats).numpy()


def _fid_statistics(features: np.ndarray) -> dict:
    """torch-fidelity's FID statistics (mean and covariance) of a feature matrix."""
    return fid_features_to_statistics(torch.from_numpy(np.asarray(features, np.float64)))


def fid(real_features: np.ndarray, fake_features: np.ndarray) -> float:
    """Fréchet Inception Distance between two feature matrices (rows are images), computed by
    torch-fidelity from the features of the extractor `load_inception` built."""
    stats = [_fid_statistics(f) for f in (real_features, fake_features)]
    return fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID]


def kid(
    real_features: np.ndarray,
    fake_features: np.ndarray,
    *,
    subset_size: int = 1000,
    subsets: int = 100,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (mean, std over subsets) via torch-fidelity's estimator."""
    size = min(subset_size, len(real_features), len(fake_features))
    out = kid_features_to_metric(
        torch.from_numpy(real_features),
        torch.from_numpy(fake_features),
        kid_subsets=subsets,
        kid_subset_size=size,
        verbose=False,
        rng_seed=seed,
        kid_kernel="poly",
        kid_kernel_poly_degree=3,
        kid_kernel_poly_gamma=None,
        kid_kernel_poly_coef0=1,
    )
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]


def real_feature_cache(cache_dir: Path, dataset: Path, res: int, n: int, weights: Path) -> Path:
    """Cache file for real-image features of `dataset` at `res` (first `n` images)."""
    weights = Path(weights)
    key = f"{Path(dataset).resolve()}|{res}|{n}|{weights.resolve()}|{weights.stat().st_size}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return Path(cache_dir) / f"inception-{Path(dataset).name}-{res}px-{n}-{digest}.npz"


def cached_real_features(cache: Path, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Real-image features from `cache` (.npz of features, mu, sigma) or computed and stored."""
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as data:
                return data["features"]
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: recompute and overwrite
    features = compute()
    with atomic_write(cache) as tmp:
        stats = _fid_statistics(features)  # mu and sigma, for other tools that read the cache
        np.savez(tmp, features=features.astype(np.float32), mu=stats["mu"], sigma=stats["sigma"])
    return features


def fid_kid(
    real_features: np.ndarray,
    fake_features: np.ndarray,
    *,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict:
    """FID and KID from two feature matrices: `{"fid", "kid", "kid_std"}`."""
    kid_mean, kid_std = kid(
        real_features.astype(np.float64),
        fake_features.astype(np.float64),
        subset_size=kid_subset_size,
        seed=seed,
    )
    return {"fid": fid(real_features, fake_features), "kid": kid_mean, "kid_std": kid_std}
