"""Random-scale noise: the outliers the energy ranks the data below, and the evaluation's
built-in `noise:KIND` sets."""

from __future__ import annotations

import pytest
import torch

from progressive.train import loss
from progressive.train.outliers import KINDS, noise_set, random_scale_noise, scales


def test_scales_cover_flat_colours_to_pixels():
    assert scales(32) == [1, 2, 4, 8, 16, 32]
    assert scales(32, "flat") == [1] and scales(32, "pixel") == [32]
    assert scales(32, "smooth") == [2, 4, 8] and scales(4, "smooth") == [2]
    with pytest.raises(ValueError, match="unknown noise kind"):
        scales(32, "stripes")


def test_random_scale_noise_is_seeded_in_range_and_of_every_scale():
    draw = lambda seed: random_scale_noise(  # noqa: E731
        64, 16, torch.Generator().manual_seed(seed)
    )
    a, b, c = draw(0), draw(0), draw(1)
    assert a.shape == (64, 3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1
    # Neighbouring pixels differ little at coarse scales and freely at the finest: both occur.
    step = (a[..., 1:] - a[..., :-1]).abs().flatten(1).mean(1)
    assert (step < 1e-6).any()  # a flat colour
    assert (step > 0.5).any()  # independent pixels (mean |u - v| of two uniforms is 2/3)


def test_noise_sets_are_uint8_and_of_their_kind():
    flat, smooth, pixel = (noise_set(kind, 10, 16, seed=3) for kind in KINDS)
    for images in (flat, smooth, pixel):
        assert images.shape == (10, 3, 16, 16) and images.dtype == torch.uint8
    assert (flat == flat[..., :1, :1]).all() and flat.float().std() > 20  # colours differ
    roughness = lambda x: (x[..., 1:].float() - x[..., :-1].float()).abs().mean()  # noqa: E731
    assert 0 < roughness(smooth) < roughness(pixel)
    assert torch.equal(noise_set("smooth", 10, 16, seed=3), smooth)


def test_outlier_ranking_pushes_data_down_and_outliers_up():
    real = torch.tensor([0.0, 1.0], requires_grad=True)
    noise = torch.tensor([5.0, -3.0], requires_grad=True)
    value = loss.outlier_ranking(real, noise)
    expected = torch.nn.functional.softplus(torch.tensor([-5.0, 4.0])).mean()
    assert value.item() == pytest.approx(expected.item())
    value.backward()
    assert (real.grad > 0).all() and (noise.grad < 0).all()
    # Ranked far apart in the right order, the term vanishes.
    assert loss.outlier_ranking(torch.zeros(3), torch.full((3,), 50.0)).item() < 1e-20
