import pickle

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
import torch.nn.functional as F

from progressive.core.errors import UserError
from progressive.metrics import fidelity as metrics
from progressive.metrics import inception


def _smooth_images(n: int, res: int, seed: int) -> torch.Tensor:
    """Smooth uint8 images with structure at two scales (upsampled noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 3, res, res)
    for size in (4, 8):
        x += F.interpolate(torch.randn(n, 3, size, size, generator=g), size=res, mode="bilinear")
    return ((x / 2 * 60 + 128).clamp(0, 255)).to(torch.uint8)


def test_descriptor_swd_matches_scipy_per_direction():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(50, 6, generator=g)
    b = torch.randn(50, 6, generator=g) * 1.5 + 0.3
    dirs = metrics.random_directions(6, 2, 3, g)
    assert torch.allclose(dirs.norm(dim=1), torch.ones(2, 3))
    expected = np.mean(
        [
            scipy.stats.wasserstein_distance((a @ d).numpy(), (b @ d).numpy())
            for rep in dirs
            for d in rep.T
        ]
    )
    got = metrics.sliced_wasserstein_descriptors(a, b, dirs)
    assert got == pytest.approx(expected, rel=1e-5)
    assert metrics.sliced_wasserstein_descriptors(a, a, dirs) == 0.0


def test_laplacian_pyramid_reconstructs_the_image():
    x = torch.rand(2, 3, 32, 32) * 255
    pyramid = metrics.laplacian_pyramid(x, 3)
    assert [p.shape[-1] for p in pyramid] == [32, 16, 8]
    rebuilt = pyramid[-1]
    for level in reversed(pyramid[:-1]):
        rebuilt = level + metrics._pyr_up(rebuilt)
    assert torch.allclose(rebuilt, x, atol=1e-3)
    # A constant image has no detail: every band-pass level is zero, the coarsest keeps the value.
    flat = metrics.laplacian_pyramid(torch.full((1, 3, 16, 16), 7.0), 2)
    assert flat[0].abs().max() < 1e-4 and torch.allclose(flat[1], torch.full_like(flat[1], 7.0))


def test_the_pyramids_blur_is_the_binomial_kernel_with_mirrored_edges():
    impulse = torch.zeros(1, 3, 9, 9)
    impulse[:, :, 4, 4] = 16.0 * 16.0
    taps = torch.tensor([1.0, 4, 6, 4, 1])
    blurred = metrics._blur(impulse)
    assert torch.allclose(blurred[0, 1, 2:7, 2:7], taps[:, None] * taps[None, :])
    corner = torch.zeros(1, 1, 9, 9)
    corner[..., 0, 0] = 1.0
    # mirror padding reflects the outside taps back in: the corner keeps (6/16)^2, not less
    assert abs(metrics._blur(corner)[0, 0, 0, 0].item() - (6 / 16) ** 2) < 1e-6


def test_patch_descriptors_shapes_and_normalisation():
    images = _smooth_images(6, 32, seed=0)
    desc = metrics.patch_descriptors(images, patches_per_image=10)
    assert list(desc) == [32, 16]
    for d in desc.values():
        assert d.shape == (60, 147)
        per_channel = d.view(60, 3, 49)
        assert torch.allclose(per_channel.mean(dim=(0, 2)), torch.zeros(3), atol=1e-5)
        assert torch.allclose(per_channel.std(dim=(0, 2)), torch.ones(3), atol=1e-4)
    # Batches given as an iterable give the same descriptors as one tensor.
    split = metrics.patch_descriptors([images[:4], images[4:]], patches_per_image=10)
    assert all(torch.allclose(desc[r], split[r], atol=1e-5) for r in desc)


def test_swd_orders_sets_by_difference_and_is_deterministic():
    real = _smooth_images(64, 32, seed=0)
    other_real = _smooth_images(64, 32, seed=1)
    g = torch.Generator().manual_seed(5)
    noisy = (real.float() + torch.randn(real.shape, generator=g) * 20).clamp(0, 255).byte()
    noisier = (real.float() + torch.randn(real.shape, generator=g) * 60).clamp(0, 255).byte()
    kw = dict(dirs_per_repeat=64, patches_per_image=32)
    same = metrics.sliced_wasserstein(real, other_real, **kw)
    near = metrics.sliced_wasserstein(real, noisy, **kw)
    far = metrics.sliced_wasserstein(real, noisier, **kw)
    assert same["levels"] == [32, 16] and len(same["swd"]) == 2
    assert same["mean"] == pytest.approx(np.mean(same["swd"]))
    # The finest level sees the pixel noise most clearly.
    assert same["swd"][0] < near["swd"][0] < far["swd"][0]
    assert same["mean"] < near["mean"] < far["mean"]
    # Only patch sampling separates a set from itself.
    assert metrics.sliced_wasserstein(real, real, **kw)["swd"][0] < 0.5 * near["swd"][0]
    again = metrics.sliced_wasserstein(real, noisy, **kw)
    assert again == near
    assert metrics.sliced_wasserstein(real, noisy, seed=3, **kw) != near


def test_swd_accepts_float_images_in_generator_range():
    real = _smooth_images(8, 16, seed=0)
    as_float = real.float() / 127.5 - 1
    kw = dict(dirs_per_repeat=16, patches_per_image=8)
    assert metrics.sliced_wasserstein(real, as_float, **kw) == metrics.sliced_wasserstein(
        real, real, **kw
    )


def test_swd_rejects_small_or_mismatched_sets():
    with pytest.raises(ValueError, match="at least 16"):
        metrics.sliced_wasserstein(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="equal-size"):
        metrics.sliced_wasserstein(
            _smooth_images(3, 16, 0), _smooth_images(2, 16, 1), patches_per_image=4
        )


def test_reconstruction_error_and_mean_image_baseline():
    real = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    recon = torch.rand(4, 3, 8, 8) * 2 - 1
    expected = ((real.float() / 127.5 - 1 - recon) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(metrics.reconstruction_error(real, recon), expected)
    assert torch.all(metrics.reconstruction_error(recon, recon) == 0)
    train = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    mean = train.float().div(127.5).sub(1).mean(dim=0)
    base = metrics.mean_image_baseline(train, real)
    assert torch.allclose(base, ((real.float() / 127.5 - 1 - mean) ** 2).mean(dim=(1, 2, 3)))


def test_fid_of_a_shifted_set_is_the_squared_shift():
    # Equal covariances cancel in the trace term, leaving ||mu1 - mu2||^2.
    real = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0], [1.0, 3.0]])
    assert inception.fid(real, real + [-3.0, 4.0]) == pytest.approx(25.0, abs=1e-6)
    assert inception.fid(real, real) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_inception_weights_missing_or_bad(tmp_path):
    with pytest.raises(inception.InceptionUnavailable, match="--inception-weights"):
        inception.load_inception(None)
    with pytest.raises(inception.InceptionUnavailable, match="does not exist"):
        inception.load_inception(tmp_path / "nope.pth")
    assert issubclass(inception.InceptionUnavailable, UserError)
    # A pickle that would run code must not run: torch-fidelity's loader is forced weights-only.
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "evil.pth"
    bad.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(inception.InceptionUnavailable, match="not a usable"):
        inception.load_inception(bad)
    assert not marker.exists()
    wrong = tmp_path / "wrong.pth"
    torch.save({"weight": torch.zeros(2)}, wrong)
    with pytest.raises(inception.InceptionUnavailable, match="not a usable"):
        inception.load_inception(wrong)


class _StandIn(torch.nn.Module):
    """A small fixed feature extractor with torch-fidelity's calling convention (uint8 in)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)

    def forward(self, x):
        h = torch.relu(self.conv(x.float() / 128 - 1))
        return (torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1),)


def test_fid_kid_with_stand_in_extractor():
    extractor = _StandIn()
    real = _smooth_images(120, 16, seed=0)
    other = _smooth_images(120, 16, seed=1)
    shifted = (real.float() * 0.5).byte()
    f_real = inception.inception_features(extractor, real, batch=50)
    assert f_real.shape == (120, 32) and f_real.dtype == np.float64
    f_other = inception.inception_features(extractor, [other[:70], other[70:]])
    f_shift = inception.inception_features(extractor, shifted)
    near = inception.fid_kid(f_real, f_other, kid_subset_size=50)
    far = inception.fid_kid(f_real, f_shift, kid_subset_size=50)
    assert near["fid"] < far["fid"] and near["kid"] < far["kid"]
    same = inception.fid_kid(f_real, f_real, kid_subset_size=50)
    assert same["fid"] == pytest.approx(0, abs=1e-6)


def test_real_feature_cache_computes_once(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"0")
    cache = inception.real_feature_cache(tmp_path / "cache", tmp_path / "data", 32, 100, weights)
    assert cache != inception.real_feature_cache(
        tmp_path / "cache", tmp_path / "data", 16, 100, weights
    )
    calls = []

    def compute():
        calls.append(1)
        return np.arange(12, dtype=np.float64).reshape(4, 3)

    first = inception.cached_real_features(cache, compute)
    second = inception.cached_real_features(cache, compute)
    assert len(calls) == 1 and np.array_equal(first, second)
    with np.load(cache) as data:
        assert np.allclose(data["mu"], first.mean(axis=0))
        assert data["sigma"].shape == (3, 3)


def test_swd_from_shared_descriptors_equals_swd_of_the_images():
    g = torch.Generator().manual_seed(3)
    real = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g)
    fakes = [torch.rand(6, 3, 32, 32, generator=g) * 2 - 1 for _ in range(2)]
    shared = metrics.patch_descriptors(real, seed=2 * 5)
    for fake in fakes:
        direct = metrics.sliced_wasserstein(real, fake, seed=5)
        # the generated set streamed in batches, the real set's descriptors reused
        via = metrics.swd_of_descriptors(
            shared, metrics.patch_descriptors([fake[:4], fake[4:]], seed=2 * 5 + 1), seed=5)
        assert via == direct
    assert metrics.sliced_wasserstein(real, fakes[0], seed=5) != direct
