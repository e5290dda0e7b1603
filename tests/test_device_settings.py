"""Settings a GPU run depends on, checked on the CPU: float32 math in the use commands,
determinism, the energy's precision under autocast, what DDP broadcasts, mask copies."""

import pytest
import torch
from tiny import TINY_NETWORKS, config, networks_of

from progressive.core.float32 import float32_modes, set_float32_math
from progressive.run import checkpoint as ckpt
from progressive.run import loading

TINY = dict(**TINY_NETWORKS, max_res=8, batch=4, workers=0)


@pytest.fixture
def float32_restored():
    yield
    set_float32_math(False)


@pytest.mark.parametrize("tf32", [False, True])
def test_loading_a_run_applies_its_tf32_setting(tmp_path, float32_restored, tf32):
    cfg = config("demo", **TINY, tf32=tf32)
    nets = networks_of(cfg)
    optimizers = {n: torch.optim.Adam(nets[n].parameters()) for n in ckpt.WEIGHTS}
    ckpt.save_snapshot(tmp_path / "run", 0, cfg, nets, optimizers)
    set_float32_math(not tf32)  # what a use command found before: the other setting
    loading.load_run(tmp_path / "run", device="cpu")
    mode = "tf32" if tf32 else "ieee"
    assert float32_modes() == (mode, mode)


def test_training_uses_deterministic_convolutions():
    from accelerate import Accelerator

    from progressive.train.trainer import Trainer

    before = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
        Trainer.create(config("demo", **TINY), Accelerator(cpu=True))
        assert torch.backends.cudnn.benchmark is False
        assert torch.backends.cudnn.deterministic is True
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before


def test_energies_keep_fp32_resolution_under_bf16_autocast():
    from progressive.model.networks import Energy

    torch.manual_seed(0)
    energy = Energy(8, fmap_base=64, fmap_max=16).eval()
    last = energy.trunk.blocks["4"].dense1
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        last.bias.zero_()
        e = energy(x)
        last.weight.mul_(0.01 / (e[0] - e[1]).abs())  # the two energies 0.01 apart ...
        last.bias.fill_(50.0)  # ... near 50, where bf16's steps are 0.25
        exact = energy(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = energy(x)
    assert abs(abs(exact[0] - exact[1]) - 0.01) < 1e-4 and (exact - 50).abs().max() < 0.1
    assert mixed.dtype == torch.float32
    assert abs(abs(mixed[0] - mixed[1]) - 0.01) < 2e-3  # bf16 earlier layers, fp32 output


def _pca_rank(rank: int, port: int, out: str) -> None:
    import json
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), ACCELERATE_USE_CPU="1")
    torch.set_num_threads(1)
    from progressive.train import distributed
    from progressive.train.trainer import Trainer, make_accelerator

    cfg = config("demo", **TINY, pca_path=True)
    accelerator = make_accelerator(cfg)
    try:
        trainer = Trainer.create(cfg, accelerator)
        ddp = trainer.pair
        mean = trainer.generator.pca.mean
        with torch.no_grad():
            mean.fill_(rank)  # ranks that disagree: DDP's per-step broadcast would overwrite it
            n, latent = 4, cfg.networks.latent
            ddp(torch.zeros(n, 3, 4, 4), torch.zeros(n, latent), torch.zeros(n, latent), 4, 1.0)
        after_step = mean[0].item()
        distributed.broadcast_fixed_buffers(trainer.unwrapped())
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump({"wrapped": type(ddp).__name__, "synced": list(ddp.named_module_buffers),
                       "after_step": after_step, "after_broadcast": mean[0].item()}, f)
        accelerator.wait_for_everyone()
    finally:
        accelerator.end_training()
    # The results are written: leave without the interpreter's teardown, where gloo's threads
    # at times abort a spawned child (SIGABRT) after its work is done.
    os._exit(0)


def test_ddp_does_not_broadcast_the_principal_components_at_every_step(tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_pca_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    second = json.loads((tmp_path / "rank1.json").read_text())
    assert second["wrapped"] == "DistributedDataParallel"
    assert second["synced"] == []  # no buffer left for DDP to send at each step
    assert second["after_step"] == 1.0  # a step kept the rank's own value ...
    assert second["after_broadcast"] == 0.0  # ... set once from the main process


class _RecordedCopies(torch.Tensor):
    """A tensor that records the keyword arguments of every `.to` called on it."""

    copies: list[dict] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to:
            cls.copies.append(dict(kwargs))
        plain = [a.as_subclass(torch.Tensor) if isinstance(a, cls) else a for a in args]
        return func(*plain, **kwargs)


def test_a_step_copies_the_masks_without_blocking():
    from accelerate import Accelerator

    from progressive.config.schedule import Schedule
    from progressive.train.trainer import Trainer

    cfg = config("demo", **TINY)
    trainer = Trainer.create(cfg, Accelerator(cpu=True))
    phase = Schedule.from_config(cfg).at(0)
    real = torch.randint(0, 256, (4, 3, phase.res, phase.res), dtype=torch.uint8)
    mask = torch.ones(4, 1, phase.res, phase.res, dtype=torch.uint8)
    mask[:, :, :2] = 0
    _RecordedCopies.copies = []
    stats = trainer.step(real, phase, 0, mask.as_subclass(_RecordedCopies))
    assert all(torch.isfinite(v) for v in stats.values())
    assert _RecordedCopies.copies and all(c.get("non_blocking") for c in _RecordedCopies.copies)


def test_a_presets_built_in_data_stays_small_at_every_size():
    from progressive.config.sizing import BUILTIN_MIN_COUNT

    for preset, max_res in [("celebahq1024", None), ("demo", 1024), ("cifar10", 512), (None, 1024)]:
        count = config(preset, **({"max_res": max_res} if max_res else {})).data.synthetic_count
        res = max_res or 1024
        assert BUILTIN_MIN_COUNT <= count and count * 3 * res * res <= 2**30, (preset, count)
    assert config("celebahq1024").data.synthetic_count == 341
    assert config("cifar10").data.synthetic_count == 20000  # 32 px: 61 MB, as it was
    assert config("celebahq1024", synthetic_count=5000).data.synthetic_count == 5000
