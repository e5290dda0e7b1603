"""Work sized by a memory budget: the PCA baseline's fit, batch sizes from counted activation
bytes, Langevin chains that do not depend on the batch size."""

from __future__ import annotations

import pytest
import torch
from tiny import TINY_NETWORKS, config, networks_of

from progressive.metrics import pca
from progressive.metrics import quality as qm
from progressive.model import budget
from progressive.model.langevin import Langevin, refine


def _images(n, res, seed=0):
    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(4, 3 * res * res, generator=gen) * 0.2
    x = (torch.randn(n, 4, generator=gen) @ basis).view(n, 3, res, res)
    return ((x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(-1, 1) * 127.5 + 127.5).to(
        torch.uint8)


@pytest.mark.parametrize("res", [2, 8])  # covariance (12 values < 40 images), Gram (192 > 40)
def test_budgeted_fit_matches_the_fit_in_memory(res):
    train, held = _images(40, res), _images(10, res, seed=1)
    fit, full = pca.fit(train), qm.principal_components(train)
    assert fit["method"] == ("covariance" if res == 2 else "gram")
    assert "basis" not in fit or fit["method"] == "covariance"
    torch.testing.assert_close(fit["variance"][:5], full["variance"][:5])
    torch.testing.assert_close(qm.pca_baseline(fit, held, 3), qm.pca_baseline(full, held, 3))
    torch.testing.assert_close(qm.ppca_nll(fit, held, 3), qm.ppca_nll(full, held, 3))


def test_fit_takes_as_many_images_as_the_budget_holds():
    values = 3 * 1024 * 1024
    assert pca.fit_count(10000, values, budget=pca.CHUNK_BYTES + 100 * values) == 100
    assert pca.fit_count(50, values, budget=pca.CHUNK_BYTES + 100 * values) == 50
    picked = pca.pick(1000, 100)
    assert len(picked) == 100 and picked[0] == 0 and picked[-1] >= 990  # spread over the set


def _nets():
    nets = networks_of(config("demo", max_res=32, **TINY_NETWORKS))
    return {k: nets[k].eval().requires_grad_(False) for k in ("generator", "energy")}


def test_batch_shrinks_with_resolution_and_budget():
    nets = _nets()
    small = budget.per_image("latent", 8, 1.0, latent=8, **nets)
    large = budget.per_image("latent", 32, 1.0, latent=8, **nets)
    assert large > 8 * small  # 16x the pixels
    assert budget.batch_for(large, budget=10 * large) == 10
    assert budget.batch_for(large, budget=1) == 1
    assert budget.batch_for(1) == budget.MAX_BATCH


def test_langevin_chains_do_not_depend_on_the_batch_size():
    nets = _nets()
    z = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    chain = Langevin(steps=2, step_size=1e-3, noise=1.0)
    args = (nets["generator"], nets["energy"], z, 16, 1.0, chain)
    torch.testing.assert_close(refine(*args, seed=3, batch=5), refine(*args, seed=3, batch=2))
