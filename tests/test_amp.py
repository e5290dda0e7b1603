"""fp16's loss scaler with three optimizers: each unscaled once, the scale updated once."""

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from tiny import TINY_NETWORKS, config, write_synthetic

from progressive.config.schedule import Schedule
from progressive.train import trainer as training
from progressive.train.trainer import Trainer

CLIP = 1e-4  # far below any gradient norm here, so every clipped gradient has this norm


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("data") / "synthetic", 24, 8)


@pytest.fixture
def scaled(dataset, request):
    """A trainer whose accelerator has the loss scaler a GPU's fp16 run gets (accelerate gives
    a CPU none), and the phase of its first step."""
    AcceleratorState._reset_state(reset_partial_state=True)
    request.addfinalizer(lambda: AcceleratorState._reset_state(reset_partial_state=True))
    acc = Accelerator(cpu=True, mixed_precision="fp16")
    acc.scaler, acc.native_amp = torch.amp.GradScaler("cpu", init_scale=16.0), True
    # Adam's first beta 0: after one step each first moment is the gradient it was given.
    cfg = config("demo", **TINY_NETWORKS | {"mixed_precision": "fp16"}, data=str(dataset),
                 max_res=8, batch=4, fade_kimg=0.008, stable_kimg=0.008, grad_clip=CLIP,
                 betas=(0.0, 0.99), workers=0)
    return Trainer.create(cfg, acc), Schedule.from_config(cfg).at(16)


def first_moment_norm(optimizer: torch.optim.Optimizer) -> float:
    moments = [s["exp_avg"] for s in optimizer.state.values()]
    return torch.linalg.vector_norm(torch.stack([m.norm() for m in moments])).item()


def test_each_network_steps_on_its_clipped_unscaled_gradient(scaled):
    trainer, phase = scaled
    real = torch.randint(0, 256, (4, 3, phase.res, phase.res), dtype=torch.uint8)
    stats = trainer.step(real, phase, 16)
    assert all(torch.isfinite(v) for v in stats.values())
    for name in ("energy", "generator", "inference"):
        assert stats[f"grad_norm_{name}"] > 100 * CLIP  # so clipping acted
        # A second unscaling would leave the gradient 16 times smaller than its clipped norm.
        assert first_moment_norm(trainer.optimizers[name]) == pytest.approx(CLIP, rel=1e-3), name
    assert trainer.accelerator.scaler.get_scale() == 16.0


def test_one_overflow_lowers_the_scale_once(scaled, monkeypatch):
    trainer, phase = scaled
    joint = training.triangle.joint_loss

    def overflowing(*args, **kwargs):
        loss, stats = joint(*args, **kwargs)
        return loss * float("inf"), stats

    monkeypatch.setattr(training.triangle, "joint_loss", overflowing)
    generator = [p.detach().clone() for p in trainer.generator.parameters()]
    real = torch.randint(0, 256, (4, 3, phase.res, phase.res), dtype=torch.uint8)
    trainer.step(real, phase, 16)
    assert trainer.accelerator.scaler.get_scale() == 8.0  # halved once, not once per optimizer
    # The overflowing step moved neither network it reached.
    after = trainer.generator.parameters()
    assert all(torch.equal(a, b) for a, b in zip(generator, after, strict=True))
    assert not trainer.optimizers["inference"].state
