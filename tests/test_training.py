"""The training loop: two stages end to end, exact resume, gradient routing, command errors."""

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from click.testing import CliRunner
from safetensors.torch import load_file
from tiny import TINY_NETWORKS, cli_args, config, networks_of, write_synthetic

from progressive.cli.main import main
from progressive.config.schedule import Schedule
from progressive.core.images import to_float
from progressive.model.layers import fade_real
from progressive.model.networks import network_names
from progressive.run import checkpoint as ckpt
from progressive.run import folder as layout
from progressive.run import loading
from progressive.train import loss
from progressive.train.loop import resolve_run, train
from progressive.train.outliers import random_scale_noise
from progressive.train.trainer import Trainer, step_generator

TINY = dict(
    **TINY_NETWORKS,
    max_res=8,
    batch=4,
    fade_kimg=0.032,
    stable_kimg=0.016,
    workers=0,
    snapshot_kimg=1.0,
    tick_kimg=0.016,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("data") / "synthetic", 40, 16)


def tiny(dataset, **kw):
    return config("demo", **(TINY | {"data": str(dataset)} | kw))


def weights(snapshot):
    return {n: load_file(snapshot / f"{n}.safetensors") for n in ckpt.WEIGHTS}


def assert_same_weights(first, second):
    """Every tensor of every network of two snapshots equal (to fp32 round-off)."""
    a, b = weights(first), weights(second)
    for net in ckpt.WEIGHTS:
        for key in a[net]:
            torch.testing.assert_close(a[net][key], b[net][key], atol=1e-6, rtol=0)


def test_two_stages_end_to_end(dataset, tmp_path):
    cfg = tiny(dataset)
    final = train(cfg, tmp_path / "run", progress=False)
    total = Schedule.from_config(cfg).end_of_last_stage
    assert final.name == f"snapshot-{total:09d}"
    stats = [
        json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()
    ]
    assert {s["res"] for s in stats} == {4, 8}
    assert any(0 < s["alpha"] < 1 for s in stats)
    for key in ("rec", "kl", "latent_nll", "energy_real", "energy_fake", "images_per_s"):
        assert all(key in s for s in stats)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    stage_ends = [Schedule.from_config(cfg).at(0).stage_end, total]
    # The grids at the start and at each stage end (all under 1 kimg here) are all kept.
    assert {"samples-0004px-000000000.png"} | {
        f"samples-{r:04d}px-{end:09d}.png" for r, end in zip((4, 8), stage_ends, strict=True)
    } <= files
    assert any(f.startswith("reconstructions-0008px") for f in files)
    assert "config.json" in files
    # The starting point and both stage ends are snapshots.
    assert len(layout.list_snapshots(tmp_path / "run")) == 3
    run = loading.load_run(tmp_path / "run")
    assert (run.res, run.alpha, run.images_shown) == (8, 1.0, total)


@pytest.mark.parametrize(
    "stop_kimg,alpha,reset",
    [
        (0.024, 0.25, False),  # 8 images into the 32-image fade-in
        (0.016, 0.0, True),  # at the stage boundary, where the optimizers are reset
    ],
)
def test_resume_mid_fade_matches_uninterrupted_run(dataset, tmp_path, stop_kimg, alpha, reset):
    full = train(tiny(dataset, reset_optimizers=reset), tmp_path / "full", progress=False)
    half = train(
        tiny(dataset, total_kimg=stop_kimg, reset_optimizers=reset), tmp_path / "parts",
        progress=False,
    )
    state = loading.read_state(half)
    phase = Schedule.from_config(state["config"]).at(state["images_shown"])
    assert phase.stage == 1 and phase.alpha == pytest.approx(alpha)
    cfg, run_dir, snapshot = resolve_run(
        tiny(dataset, reset_optimizers=reset), {"schedule.total_kimg": 0.064}, tmp_path,
        "parts", "auto"
    )
    assert snapshot == half and run_dir == tmp_path / "parts"
    resumed = train(cfg, run_dir, snapshot, progress=False)
    assert resumed.name == full.name
    assert_same_weights(full, resumed)
    opt_a = torch.load(full / "optimizers.pt", weights_only=True)
    opt_b = torch.load(resumed / "optimizers.pt", weights_only=True)
    for net in opt_a:
        for idx, st in opt_a[net]["state"].items():
            torch.testing.assert_close(
                st["exp_avg"], opt_b[net]["state"][idx]["exp_avg"], atol=1e-6, rtol=0
            )


def test_gradients_reach_the_right_networks(dataset):
    cfg = tiny(dataset, max_res=16)
    trainer = Trainer.create(cfg)
    nets = {
        "generator": trainer.generator,
        "energy": trainer.energy,
        "inference": trainer.inference,
    }
    seen = {}

    def grads():
        return {
            n: [None if p.grad is None else p.grad.clone() for p in m.parameters()]
            for n, m in nets.items()
        }

    for name, opt in trainer.optimizers.items():
        original = opt.step

        def step(*a, _name=name, _orig=original, **k):
            seen[_name] = grads()
            return _orig(*a, **k)

        opt.step = step
    phase = Schedule.from_config(cfg).at(16)  # fading into 8x8
    real = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    trainer.step(real, phase, 16)

    def nonzero(gs):
        return any(g is not None and g.abs().sum() > 0 for g in gs)

    # Energy step: only the energy model has gradients.
    assert nonzero(seen["energy"]["energy"])
    assert not nonzero(seen["energy"]["generator"]) and not nonzero(seen["energy"]["inference"])
    # Joint step: generator and inference receive gradients; the energy model's are untouched.
    assert nonzero(seen["generator"]["generator"]) and nonzero(seen["generator"]["inference"])
    for before, after in zip(seen["energy"]["energy"], seen["generator"]["energy"], strict=True):
        assert (before is None and after is None) or torch.equal(before, after)
    # Blocks above the current resolution never receive gradients.
    g = trainer.generator
    top = [p for n, p in g.named_parameters() if n.split(".")[1] == "16"]
    assert top and all(p.grad is None or p.grad.abs().sum() == 0 for p in top)


def test_snapshot_without_state_is_not_the_latest(dataset, tmp_path):
    final = train(tiny(dataset, total_kimg=0.016), tmp_path / "run", progress=False)
    partial = tmp_path / "run" / "snapshot-000000999"
    partial.mkdir()
    (partial / "generator.safetensors").write_bytes(b"half")
    assert layout.list_snapshots(tmp_path / "run")[-1] == final
    assert layout.resolve_snapshot(tmp_path / "run") == final


def test_dry_run_1024_lists_nine_stages_with_default_widths():
    result = CliRunner().invoke(
        main, ["train", "--dry-run", "--max-res", "1024", "--preset", "celebahq1024",
               "--calibration-seconds", "0"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [s["res"] for s in out["stages"]] == [4 << i for i in range(9)]
    networks = out["config"]["networks"]
    assert networks["fmap_base"] == 16384 and networks["fmap_max"] == 512
    for stage in out["stages"]:
        assert {"res", "fade_kimg", "stable_kimg", "batch", "lr"} <= set(stage)
        assert set(stage["lr"]) == {"generator", "energy", "inference"}
    # Progressive GAN's generator at 1024 with these widths has about 23 million parameters.
    assert 20e6 < out["parameters"]["generator"] < 26e6
    assert set(out["parameters"]) == {"generator", "energy", "inference"}


@pytest.mark.parametrize(
    "args,message",
    [
        (["--max-res", "48"], "power of two"),
        (["--max-res", "2048"], "--max-res 2048: a power of two from 4 to 1024"),
        (["--batch", "0"], "'--batch': 0 is not in the range x>=1"),
        (["--data", "/nonexistent/dataset"], "does not exist"),
    ],
)
def test_bad_options_are_one_line_errors(args, message, tmp_path):
    result = CliRunner().invoke(main, ["train", "--outdir", str(tmp_path), *args])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_max_res_above_dataset_is_refused(dataset, tmp_path):
    result = CliRunner().invoke(
        main, ["train", "--data", str(dataset), "--max-res", "32", "--outdir", str(tmp_path)]
    )
    assert result.exit_code == 1 and "above the dataset's max_res 16" in result.output


def test_existing_run_needs_resume(dataset, tmp_path):
    args = ["train", *cli_args(data=dataset, outdir=tmp_path, name="r", max_res=4,
                               stable_kimg=0.008, batch=4, workers=0, **TINY_NETWORKS)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0
    assert f"cpu ({torch.get_num_threads()} threads)" in first.output  # one process's threads
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "--resume auto" in again.output
    longer = CliRunner().invoke(main, [*args, "--resume", "auto", "--total-kimg", "0.016"])
    assert longer.exit_code == 0, longer.output
    assert layout.list_snapshots(tmp_path / "r")[-1].name == "snapshot-000000016"


def test_full_loss_at_1024_is_finite_in_all_three_networks():
    from progressive.train.loss import energy_loss, joint_loss

    cfg = config("celebahq1024", fmap_base=1024, fmap_max=32, latent=32)
    nets = networks_of(cfg)
    g, e, i = nets["generator"], nets["energy"], nets["inference"]
    x = torch.rand(1, 3, 1024, 1024) * 2 - 1
    z, eps = torch.randn(1, 32), torch.randn(1, 32)
    mu, logvar = i(x, 0.5)
    x_rec, x_fake = g(torch.cat([mu + (0.5 * logvar).exp() * eps, z]), 1024, 0.5).split(1)
    loss_e, _ = energy_loss(e(x, 0.5), e(x_fake.detach(), 0.5), cfg.loss)
    mu_f, logvar_f = i(x_fake, 0.5)
    loss_j, _ = joint_loss(
        x, x_rec, mu, logvar, z, mu_f, logvar_f, e(x_fake, 0.5), 1024, cfg.loss
    )
    (loss_e + loss_j).backward()
    assert torch.isfinite(loss_e) and torch.isfinite(loss_j)
    for net in (g, e, i):
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(gr).all() for gr in grads)
        assert sum(gr.abs().sum() for gr in grads) > 0


def test_snapshot_files_reach_the_disk_before_it_is_published(tmp_path, monkeypatch):
    cfg = config("demo", **TINY)
    nets = networks_of(cfg)
    optimizers = {n: torch.optim.Adam(nets[n].parameters()) for n in ckpt.WEIGHTS}
    synced = []
    real = ckpt.fsync_path

    def record(path):
        synced.append((Path(path).name, (tmp_path / "run" / "snapshot-000000032").exists()))
        real(path)

    monkeypatch.setattr(ckpt, "fsync_path", record)
    final = ckpt.save_snapshot(tmp_path / "run", 32, cfg, nets, optimizers)
    files = sorted(p.name for p in final.iterdir())
    kept = network_names(cfg.optim.half_lives())
    assert len(files) == len(kept) + 2  # weights, optimizers.pt, state.json
    # the files, then the temporary folder that lists them, all before the rename
    assert sorted(name for name, published in synced[:-2] if not published) == files
    assert synced[-2][0].startswith(".snapshot-000000032.tmp-") and not synced[-2][1]
    assert synced[-1] == ("run", True)  # then the rename, in its directory


def _float32_mode() -> str:
    if hasattr(torch.backends, "fp32_precision"):
        return torch.backends.cudnn.conv.fp32_precision
    return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"


def test_tf32_is_off_unless_asked_for():
    from progressive.train.trainer import set_float32_math

    result = CliRunner().invoke(
        main, ["train", "--dry-run", "--set", "run.tf32=true", "--calibration-seconds", "0"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["config"]["run"]["tf32"] is True
    try:
        set_float32_math(True)
        assert _float32_mode() == "tf32"
        Trainer.create(config("demo", **TINY_NETWORKS), Accelerator(cpu=True))
        assert _float32_mode() == "ieee"  # the default config: exact fp32
    finally:
        set_float32_math(False)


def test_fp16_loss_scaler_unscales_each_network_once(dataset, request):
    # accelerate gives CPUs no loss scaler; give it the one a GPU run gets, so the fp16 path
    # (unscale, clip, step, update for three optimizers) runs here.
    AcceleratorState._reset_state(reset_partial_state=True)  # other tests set precision "no"
    request.addfinalizer(lambda: AcceleratorState._reset_state(reset_partial_state=True))
    acc = Accelerator(cpu=True, mixed_precision="fp16")
    acc.scaler, acc.native_amp = torch.amp.GradScaler("cpu", init_scale=2.0**10), True
    cfg = tiny(dataset, max_res=8, mixed_precision="fp16")
    trainer = Trainer.create(cfg, acc)
    weights = [p.detach().clone() for p in trainer.generator.parameters()]
    phase = Schedule.from_config(cfg).at(16)
    real = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    finite = []
    for i in range(16):  # the scaler halves its scale on each overflow until steps go through
        stats = trainer.step(real, phase, 16 + 4 * i)
        finite.append(all(torch.isfinite(v) for v in stats.values()))
    assert any(finite) and acc.scaler.get_scale() < 2.0**10
    after = trainer.generator.parameters()
    assert any(not torch.equal(a, b) for a, b in zip(weights, after, strict=True))


@pytest.mark.parametrize("own", [None, [0.9, 0.99]])
@pytest.mark.parametrize("network", ["inference", "energy"])
def test_inference_and_energy_models_may_have_their_own_adam_betas(network, own):
    cfg = config("demo", **TINY_NETWORKS, **{f"betas_{network}": own})
    trainer = Trainer.create(cfg, Accelerator(cpu=True))
    betas = {n: opt.param_groups[0]["betas"] for n, opt in trainer.optimizers.items()}
    assert betas.pop(network) == tuple(own or cfg.optim.betas)
    assert set(betas.values()) == {tuple(cfg.optim.betas)}


def _tiny_trainer_and_batch(**loss):
    """A tiny trainer at its first phase with the loss weights `loss`, and a seeded batch of
    four real images."""
    cfg = config("demo", **TINY_NETWORKS, max_res=8, batch=4, workers=0, loss=loss)
    torch.manual_seed(0)
    trainer = Trainer.create(cfg)
    phase = Schedule.from_config(cfg).at(0)
    torch.manual_seed(1)
    real = torch.randint(0, 256, (4, 3, phase.res, phase.res), dtype=torch.uint8)
    return cfg, trainer, phase, real


def test_energy_r1_penalises_the_energy_gradient_at_the_data():
    def energy_step(r1):
        _, trainer, phase, real = _tiny_trainer_and_batch(energy_r1=r1)
        energy = trainer.unwrapped()["energy"]
        x = fade_real(to_float(real), phase.alpha).requires_grad_(True)
        (grad,) = torch.autograd.grad(energy(x, phase.alpha).sum(), x)
        stats = trainer.step(real, phase, 0)
        return stats, grad.square().flatten(1).sum(1).mean(), energy

    plain, _, plain_energy = energy_step(0.0)
    stats, want, penalised = energy_step(10.0)
    assert "energy_r1" not in plain
    assert stats["energy_r1"].item() == pytest.approx(want.item(), rel=2e-2)  # bf16 where native
    assert stats["loss_energy"] > plain["loss_energy"]
    moved = [not torch.equal(a, b) for a, b in
             zip(plain_energy.parameters(), penalised.parameters(), strict=True)]
    assert any(moved)


def test_energy_langevin_refines_the_energys_negatives_downhill():
    from progressive.core.errors import UserError

    def trainer_for(steps, noise=0.0):
        cfg = config("demo", **TINY_NETWORKS, max_res=8, batch=4, workers=0,
                          langevin_steps=steps, langevin_step_size=0.05,
                          langevin_noise=noise)
        torch.manual_seed(0)
        return Trainer.create(cfg), Schedule.from_config(cfg).at(0)

    trainer, phase = trainer_for(3)
    energy = trainer.unwrapped()["energy"]
    x = torch.rand(4, 3, phase.res, phase.res, generator=torch.Generator().manual_seed(2))
    x = 2.4 * x - 1.2  # partly outside the image range
    refined = trainer.refine_negatives(x, phase.alpha, torch.Generator().manual_seed(3))
    assert refined.min() >= -1 and refined.max() <= 1
    with torch.no_grad():
        before, after = energy(x.clamp(-1, 1), phase.alpha), energy(refined, phase.alpha)
    assert after.mean() < before.mean()
    assert all(p.requires_grad and p.grad is None for p in energy.parameters())

    torch.manual_seed(1)
    real = torch.randint(0, 256, (4, 3, phase.res, phase.res), dtype=torch.uint8)
    assert "langevin_move" not in trainer_for(0)[0].step(real, phase, 0)
    assert trainer.step(real, phase, 0)["langevin_move"] > 0

    # With noise the chain still depends only on the step's seed, not the global stream.
    results = []
    for global_seed in (5, 6):
        noisy, phase = trainer_for(2, noise=1e-3)
        torch.manual_seed(global_seed)
        noisy.step(real, phase, 8)
        results.append([p.detach().clone() for p in noisy.unwrapped()["energy"].parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
    for bad in ({"langevin_steps": -1}, {"langevin_step_size": 0.0}, {"langevin_noise": -1.0}):
        with pytest.raises(UserError, match="loss.langevin_"):
            config("demo", **bad)


@pytest.mark.parametrize("network", ["energy", "inference"])
def test_average_is_kept_saved_resumed_and_used(dataset, tmp_path, network):
    avg, kimg = f"{network}_ema", {f"{network}_ema_kimg": 0.008}
    cfg = tiny(dataset, **kimg)
    torch.manual_seed(0)
    trainer = Trainer.create(cfg)
    start = [p.detach().clone() for p in trainer.averages[avg].parameters()]
    assert all(torch.equal(a, b) for a, b in zip(
        start, trainer.unwrapped()[network].parameters(), strict=True))
    # The copy draws nothing: the other networks start as they do without an average.
    torch.manual_seed(cfg.run.seed)
    plain = networks_of(tiny(dataset, **{f"{network}_ema_kimg": 0}))
    torch.manual_seed(cfg.run.seed)
    kept = networks_of(cfg)
    for name in ("generator", "energy", "inference"):
        for a, b in zip(plain[name].parameters(), kept[name].parameters(), strict=True):
            assert torch.equal(a, b)

    full = train(cfg, tmp_path / "full", progress=False)
    w = load_file(full / f"{avg}.safetensors")
    raw = load_file(full / f"{network}.safetensors")
    assert any(not torch.equal(w[k], raw[k]) for k in w)  # averaged, not copied
    half = train(tiny(dataset, **kimg, total_kimg=0.024), tmp_path / "parts",
                 progress=False)
    c, run_dir, snapshot = resolve_run(
        tiny(dataset, **kimg), {"schedule.total_kimg": 0.064}, tmp_path, "parts", "auto"
    )
    assert snapshot == half
    resumed = train(c, run_dir, snapshot, progress=False)
    assert_same_weights(full, resumed)
    a, b = load_file(full / f"{avg}.safetensors"), load_file(resumed / f"{avg}.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    run = loading.load_run(full, device="cpu")
    for key, value in getattr(run, network).state_dict().items():
        assert torch.equal(value, w[key])
    plain = getattr(loading.load_run(full, device="cpu", **{f"raw_{network}": True}), network)
    for key, value in plain.state_dict().items():  # the raw model on request
            assert torch.equal(value, raw[key])
    (full / f"{avg}.safetensors").unlink()  # a snapshot that keeps one must hold it
    from progressive.core.errors import UserError

    with pytest.raises(UserError, match=avg):
        loading.check_snapshot(full)


def test_energy_average_started_on_resume_begins_at_the_energy_model(dataset, tmp_path):
    first = train(tiny(dataset, total_kimg=0.024, energy_ema_kimg=0), tmp_path / "run",
                  progress=False)
    assert not (first / "energy_ema.safetensors").exists()
    cfg = tiny(dataset, energy_ema_kimg=0.008)
    torch.manual_seed(0)
    trainer = Trainer.create(cfg)
    loading.load_weights(first, trainer.unwrapped())
    raw = load_file(first / "energy.safetensors")
    for key, value in trainer.averages["energy_ema"].state_dict().items():
        assert torch.equal(value, raw[key])


def test_energy_outliers_rank_the_data_below_random_scale_noise():
    def energy_step(weight):
        cfg, trainer, phase, real = _tiny_trainer_and_batch(energy_outliers=weight)
        energy = trainer.unwrapped()["energy"]
        with torch.no_grad():
            e_real = energy(fade_real(to_float(real), phase.alpha), phase.alpha)
            gen = step_generator(cfg.run.seed, 0, 0, torch.device("cpu"))
            for _ in ("z", "eps"):  # the step's draws before the outliers
                torch.randn(4, cfg.networks.latent, generator=gen)
            e_noise = energy(random_scale_noise(4, phase.res, gen), phase.alpha)
        stats = trainer.step(real, phase, 0)
        return stats, loss.outlier_ranking(e_real, e_noise), energy

    plain, _, plain_energy = energy_step(0.0)
    stats, want, ranked = energy_step(2.0)
    assert "energy_outliers" not in plain
    assert stats["energy_outliers"].item() == pytest.approx(want.item(), rel=2e-2)
    assert stats["loss_energy"].item() == pytest.approx(
        plain["loss_energy"].item() + 2.0 * want.item(), rel=2e-2, abs=1e-3
    )
    assert any(not torch.equal(a, b) for a, b in
               zip(plain_energy.parameters(), ranked.parameters(), strict=True))
