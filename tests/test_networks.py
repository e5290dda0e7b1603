import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny import networks_of

from progressive.core.errors import UserError
from progressive.model.layers import (
    EqualizedConv2d,
    EqualizedLinear,
    channels,
    num_parameters,
    pixel_norm,
)
from progressive.model.networks import Energy, Generator, Inference

MAX_RES, LATENT = 64, 16
WIDTHS = dict(fmap_base=256, fmap_max=32)
RESOLUTIONS = [4, 8, 16, 32, 64]


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return (Generator(MAX_RES, LATENT, **WIDTHS), Energy(MAX_RES, **WIDTHS),
            Inference(MAX_RES, LATENT, **WIDTHS))

FIXTURES = Path(__file__).parent / "fixtures"


def test_default_channels():
    assert channels(4) == 512
    assert channels(32) == 512
    assert channels(64) == 256
    assert channels(128) == 128
    assert channels(1024) == 16


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_shapes_every_resolution(nets, alpha):
    generator, energy, inference = nets
    z = torch.randn(3, LATENT)
    for res in RESOLUTIONS:
        x = generator(z, res, alpha)
        assert x.shape == (3, 3, res, res)
        assert energy(x, alpha).shape == (3,)
        mu, logvar = inference(x, alpha)
        assert mu.shape == logvar.shape == (3, LATENT)
        assert torch.isfinite(x).all() and torch.isfinite(mu).all()


@pytest.mark.parametrize("res", [8, 16, 32, 64])
def test_fade_starts_where_previous_stage_ended(nets, res):
    generator, energy, inference = nets
    torch.manual_seed(res)
    z = torch.randn(4, LATENT)
    with torch.no_grad():
        previous = F.interpolate(generator(z, res // 2, 1.0), scale_factor=2, mode="nearest")
        torch.testing.assert_close(generator(z, res, 0.0), previous)
        assert not torch.allclose(generator(z, res, 1.0), previous, atol=1e-3)

        x = torch.randn(4, 3, res, res)
        small = F.avg_pool2d(x, 2)
        torch.testing.assert_close(energy(x, 0.0), energy(small, 1.0))
        assert not torch.allclose(energy(x, 1.0), energy(small, 1.0), atol=1e-4)
        for a, b in zip(inference(x, 0.0), inference(small, 1.0), strict=True):
            torch.testing.assert_close(a, b)
        assert not torch.allclose(inference(x, 1.0)[0], inference(small, 1.0)[0], atol=1e-4)


def test_fade_is_linear_in_alpha(nets):
    generator = nets[0]
    z = torch.randn(2, LATENT)
    with torch.no_grad():
        old, new, mid = (generator(z, 16, a) for a in (0.0, 1.0, 0.3))
    torch.testing.assert_close(mid, 0.7 * old + 0.3 * new)


def test_equalized_learning_rate_scaling():
    torch.manual_seed(0)
    conv = EqualizedConv2d(64, 128, 3)
    linear = EqualizedLinear(256, 512, gain=1.0)
    assert abs(conv.weight.std().item() - 1.0) < 0.02
    assert abs(linear.weight.std().item() - 1.0) < 0.02
    assert (conv.bias == 0).all() and (linear.bias == 0).all()
    # Recover the weights the layers actually apply by feeding unit impulses: the centre pixel
    # of a 3x3 input sees every tap of the kernel once.
    with torch.no_grad():
        impulses = torch.eye(64 * 9).view(64 * 9, 64, 3, 3)
        effective_conv = conv(impulses)[:, :, 1, 1] - conv.bias
        effective_linear = linear(torch.eye(256)) - linear.bias
    target_conv = math.sqrt(2) / math.sqrt(64 * 9)
    assert abs(effective_conv.std().item() / target_conv - 1.0) < 0.02
    assert abs(effective_linear.std().item() * math.sqrt(256) - 1.0) < 0.02


def test_pixel_norm_unit_mean_square():
    x = torch.randn(5, 24, 7, 7) * 3.0 + 1.0
    y = pixel_norm(x)
    torch.testing.assert_close(y.square().mean(dim=1), torch.ones(5, 7, 7))
    # Direction is kept: pixel norm only rescales each feature vector.
    cos = F.cosine_similarity(x, y, dim=1)
    torch.testing.assert_close(cos, torch.ones(5, 7, 7))


def test_parameter_shapes_do_not_depend_on_stage(nets):
    generator, energy, inference = nets
    before = {k: v.shape for net in nets for k, v in net.state_dict().items()}
    count = sum(num_parameters(n) for n in nets)
    for res in RESOLUTIONS:
        x = generator(torch.randn(2, LATENT), res, 0.5)
        energy(x, 0.5)
        inference(x, 0.5)
    after = {k: v.shape for net in nets for k, v in net.state_dict().items()}
    assert before == after
    assert sum(num_parameters(n) for n in nets) == count
    assert "blocks.64.conv1.weight" in generator.state_dict()
    assert "trunk.from_rgb.64.conv.weight" in energy.state_dict()


def _stage_of(name: str) -> tuple[str, int]:
    """("blocks" | "to_rgb" | "from_rgb", resolution) of a parameter name."""
    parts = name.split(".")
    for kind in ("blocks", "to_rgb", "from_rgb"):
        if kind in parts:
            return kind, int(parts[parts.index(kind) + 1])
    raise AssertionError(name)


@pytest.mark.parametrize("res,alpha", [(16, 1.0), (16, 0.5), (4, 1.0)])
def test_gradients_reach_stage_and_not_above(res, alpha):
    torch.manual_seed(1)
    generator = Generator(MAX_RES, LATENT, **WIDTHS)
    energy, inference = Energy(MAX_RES, **WIDTHS), Inference(MAX_RES, LATENT, **WIDTHS)
    x = generator(torch.randn(4, LATENT), res, alpha)
    mu, logvar = inference(x, alpha)
    (energy(x, alpha).sum() + mu.square().sum() + logvar.sum()).backward()
    fading = res > 4 and alpha < 1.0
    for net in (generator, energy, inference):
        for name, p in net.named_parameters():
            kind, r = _stage_of(name)
            if kind == "blocks":
                used = r <= res
            else:  # an RGB adapter runs only at the current stage, or the previous one in a fade
                used = r == res or (fading and r == res // 2)
            if used:
                assert p.grad is not None and p.grad.abs().sum() > 0, name
            else:
                assert p.grad is None, name


def test_bad_resolution_is_a_clear_error(nets):
    generator, energy, _ = nets
    with pytest.raises(UserError, match="power of two"):
        generator(torch.randn(1, LATENT), 24)
    with pytest.raises(UserError, match="power of two"):
        generator(torch.randn(1, LATENT), 128)
    with pytest.raises(UserError, match="power of two"):
        energy(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="shape"):
        energy(torch.randn(1, 3, 8, 16))


def test_bf16_autocast_and_channels_last(nets):
    generator, energy, inference = nets
    z = torch.randn(4, LATENT)
    with torch.no_grad():
        ref_x = generator(z, 32, 0.5)
        ref_e = energy(ref_x, 0.5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x = generator(z, 32, 0.5)
            e = energy(x.contiguous(memory_format=torch.channels_last), 0.5)
            mu, logvar = inference(x.contiguous(memory_format=torch.channels_last), 0.5)
    assert x.dtype == torch.bfloat16
    assert e.dtype == mu.dtype == logvar.dtype == torch.float32
    assert (x.float() - ref_x).abs().max() < 0.1 * ref_x.abs().max()
    assert (e - ref_e).abs().max() < 0.1 * ref_e.abs().max() + 0.05
    cl = energy(ref_x.contiguous(memory_format=torch.channels_last), 0.5)
    torch.testing.assert_close(cl, ref_e, rtol=1e-4, atol=1e-4)


def test_minibatch_stddev_option():
    energy = Energy(16, mbstd_group=2, **WIDTHS)
    x = torch.randn(4, 3, 16, 16)
    assert energy(x).shape == (4,)
    # With the statistic, an image's energy depends on the others in its group.
    other = x.clone()
    other[2] = torch.randn(3, 16, 16)
    assert energy(x)[0] != energy(other)[0]
    assert "trunk.blocks.4.conv.weight" in energy.state_dict()
    assert energy.state_dict()["trunk.blocks.4.conv.weight"].shape[1] == channels(4, 256, 32) + 1


def test_logvar_stays_in_range():
    inference = Inference(8, LATENT, **WIDTHS)
    with torch.no_grad():
        inference.trunk.blocks["4"].dense1.bias[LATENT:] = 1e4
        assert inference(torch.randn(2, 3, 8, 8))[1].max() <= 8.0
        inference.trunk.blocks["4"].dense1.bias[LATENT:] = -1e4
        assert inference(torch.randn(2, 3, 8, 8))[1].min() >= -12.0


def test_full_resolution_forward_backward():
    """One step at 1024x1024, alpha 0.5, batch 1, reduced widths: finite values and gradients."""
    torch.manual_seed(0)
    widths = dict(fmap_base=2048, fmap_max=64)
    generator = Generator(1024, 64, **widths)
    energy, inference = Energy(1024, **widths), Inference(1024, 64, **widths)
    x = generator(torch.randn(1, 64), 1024, 0.5)
    assert x.shape == (1, 3, 1024, 1024)
    e = energy(x, 0.5)
    mu, logvar = inference(x, 0.5)
    assert torch.isfinite(e).all() and torch.isfinite(mu).all() and torch.isfinite(logvar).all()
    (e.sum() + mu.square().sum() + logvar.sum()).backward()
    for net in (generator, energy, inference):
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads
        assert all(torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0


def test_energy_width_changes_the_energy_model_only():
    from tiny import config


    kw = dict(max_res=8, latent=8, fmap_base=64, fmap_max=16, mixed_precision="no")
    base = networks_of(config("demo", **kw))

    def count(net):
        return sum(p.numel() for p in net.parameters())

    wide_energy = networks_of(config("demo", **kw, energy_width=2))
    for name in ("generator", "inference"):
        assert count(base[name]) == count(wide_energy[name])
    assert wide_energy["energy"].trunk.blocks["4"].conv.weight.shape[0] == 32
    assert wide_energy["energy"](torch.zeros(2, 3, 8, 8)).shape == (2,)
    assert count(wide_energy["energy"]) > count(base["energy"])


def test_bad_energy_width_or_average_is_a_clear_error():
    from tiny import config

    from progressive.core.errors import UserError

    bad = [("energy_width", 0), ("energy_ema_kimg", -1), ("inference_ema_kimg", -1)]
    for key, value in bad:
        with pytest.raises(UserError, match=key):
            config("demo", **{key: value})


def test_inference_average_pairs_with_the_generator_average_and_old_runs_keep_none():
    from tiny import TINY_NETWORKS, config

    from progressive.config.migrate import migrate as normalize
    from progressive.model.networks import in_use, network_names

    for preset in ("demo", "cifar10"):
        cfg = config(preset)
        lives = cfg.optim.half_lives()
        assert lives["inference"] == lives["energy"] == cfg.optim.ema_kimg > 0
        assert {"inference_ema", "energy_ema"} <= set(network_names(cfg.optim.half_lives()))
    for network in ("inference", "energy"):
        key = f"{network}_ema_kimg"
        assert config("demo", ema_kimg=3.0).optim.half_lives()[network] == 3.0
        assert config("demo", **{key: 0}).optim.half_lives()[network] == 0
        saved = json.loads((FIXTURES / "run-0.1" / "config.json").read_text())
        del saved[key]  # a run from before the average: it keeps none
        assert f"{network}_ema" not in network_names(normalize(saved).optim.half_lives())
    nets = networks_of(config("demo", **TINY_NETWORKS, max_res=8))
    assert in_use(nets, "inference") is nets["inference_ema"]
    del nets["inference_ema"]
    assert in_use(nets, "inference") is nets["inference"]
