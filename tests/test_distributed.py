"""Two gloo ranks optimise what one process does on their concatenated batch."""

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny import TINY_NETWORKS, config, networks_of, write_synthetic

from progressive.config.presets import make_config
from progressive.config.sections import Config
from progressive.model.networks import initial_networks
from progressive.train import distributed
from progressive.train import loss as triangle
from progressive.train.trainer import GeneratorInference

BATCH, RES = 8, 8
# Every batch statistic weighted, heavily enough that its gradient shows beside the others'.
WEIGHTS = {"marginal_kl": 100.0, "code_decorrelation": 100.0, "code_mmd": 100.0}


def _config() -> Config:
    return config("demo", **TINY_NETWORKS, max_res=RES, loss=WEIGHTS)


def _inputs(cfg: Config) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(BATCH, 3, RES, RES, generator=g) * 2 - 1
    z = torch.randn(BATCH, cfg.networks.latent, generator=g)
    eps = torch.randn(BATCH, cfg.networks.latent, generator=g)
    return x, z, eps


def joint_step(pair: torch.nn.Module, x, z, eps, cfg: Config) -> tuple[torch.Tensor, dict]:
    """The joint loss as the trainer forms it, backward included; (loss, stats)."""
    mu, logvar, x_rec, x_fake, mu_fake, logvar_fake = pair(x, z, eps, RES, 1.0)
    e_fake = x_fake.square().flatten(1).mean(1)  # a stand-in energy: every term reaches G
    everyone = distributed.gather_batch(mu, logvar, z)
    loss, stats = triangle.joint_loss(x, x_rec, mu, logvar, z, mu_fake, logvar_fake, e_fake,
                                      RES, cfg.loss, None, everyone)
    loss.backward()
    return loss.detach(), stats


def _rank(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    torch.set_num_threads(1)
    try:
        cfg = _config()
        nets = initial_networks(cfg)
        pair = GeneratorInference(nets["generator"], nets["inference"])
        ddp = torch.nn.parallel.DistributedDataParallel(pair, find_unused_parameters=True)
        share = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
        x, z, eps = (t[share] for t in _inputs(cfg))
        loss, stats = joint_step(ddp, x, z, eps, cfg)
        grads = {k: p.grad.clone() for k, p in pair.named_parameters() if p.grad is not None}
        torch.save({"loss": loss, "stats": stats, "grads": grads}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_match_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    cfg = _config()
    nets = initial_networks(cfg)
    pair = GeneratorInference(nets["generator"], nets["inference"])
    loss, stats = joint_step(pair, *_inputs(cfg), cfg)
    grads = {k: p.grad for k, p in pair.named_parameters() if p.grad is not None}

    for key in WEIGHTS:
        for r in ranks:  # a statistic of the whole batch, the same on every rank
            torch.testing.assert_close(r["stats"][key], stats[key], rtol=1e-5, atol=1e-6)
    # DDP averages the ranks' losses' gradients: the mean loss is the one process's loss.
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss, rtol=1e-5,
                               atol=1e-5)
    assert grads.keys() == ranks[0]["grads"].keys()
    for k, g in grads.items():
        for r in ranks:  # relative to each tensor's norm: some entries are near 0
            assert (r["grads"][k] - g).norm() <= 1e-5 * g.norm() + 1e-9, k


def _source_run(root):
    """A finished single-process run of two stages (4 and 8 px) with a snapshot at each end."""
    from progressive.train.loop import train

    data = write_synthetic(root / "data", 24, 8)
    cfg = config("demo", **TINY_NETWORKS, data=str(data), max_res=8, batch=4, fade_kimg=0.008,
                 stable_kimg=0.008, snapshot_kimg=1, tick_kimg=0.008, grid_size=2, workers=0)
    train(cfg, root / "source", progress=False)
    return root / "source"


def test_only_the_main_process_copies_a_branch(tmp_path, monkeypatch):
    from progressive.run import checkpoint as ckpt
    from progressive.run import loading
    from progressive.train.loop import resolve_run

    source = _source_run(tmp_path)
    middle = ckpt.list_snapshots(source)[1]
    cfg = config("demo", **TINY_NETWORKS)
    monkeypatch.setenv("RANK", "1")  # as torchrun sets it
    branched, run_dir, snapshot = resolve_run(cfg, {}, tmp_path, "branch", str(middle))
    assert not run_dir.exists()  # nothing written: the main process copies
    assert snapshot == tmp_path / "branch" / middle.name and branched.schedule.max_res == 8
    monkeypatch.setenv("RANK", "0")
    assert resolve_run(cfg, {}, tmp_path, "branch", str(middle))[2] == snapshot
    loading.check_snapshot(snapshot)
    assert [p.name for p in tmp_path.joinpath("branch").iterdir() if p.name.startswith(".")] == []


def test_two_ranks_branch_one_run(tmp_path):
    import os
    import subprocess
    import sys

    from tiny import cli_args

    from progressive.run import checkpoint as ckpt
    from progressive.run import loading

    source = _source_run(tmp_path)
    middle = ckpt.list_snapshots(source)[1]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
           "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "progressive", "train",
           *cli_args(outdir=tmp_path, name="branch", resume=middle, workers=0)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    snapshots = ckpt.list_snapshots(tmp_path / "branch")
    assert [p.name for p in snapshots][0] == middle.name and len(snapshots) >= 2
    assert loading.read_state(snapshots[-1])["images_shown"] == 24
    assert not [p for p in (tmp_path / "branch").iterdir() if p.name.endswith(".partial")]


def _timeout_rank(rank: int, port: int, out: str) -> None:
    import json
    import os
    import time

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), ACCELERATE_USE_CPU="1")
    from progressive.train.trainer import make_accelerator

    acc = make_accelerator(config("demo", **TINY_NETWORKS, process_timeout_s=2))
    assert acc.num_processes == 2
    if rank == 0:
        time.sleep(12)  # working alone, longer than the timeout
    start, error = time.monotonic(), None
    try:
        dist.barrier()
    except Exception as e:  # a timed-out collective: its type differs between backends
        error = str(e)
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"waited": time.monotonic() - start, "error": error}, f)


def test_the_configured_timeout_reaches_the_process_group(tmp_path):
    import json

    assert make_config("demo").run.process_timeout_s == 3600
    mp.spawn(_timeout_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    waiting = json.loads((tmp_path / "rank1.json").read_text())
    # Gloo's own default would have waited for the main process (12 s) and gone through.
    assert waiting["error"] is not None and waiting["waited"] < 10, waiting


def test_the_starting_networks_are_built_once_per_run(tmp_path):
    from progressive.metrics.stage import StageEvaluator
    data = write_synthetic(tmp_path / "data", 40, 32)
    cfg = config("demo", **TINY_NETWORKS, data=str(data), max_res=32, eval_images=4)
    built = []

    def starting(c: Config) -> dict:
        built.append(1)
        return initial_networks(c)

    evaluator = StageEvaluator(cfg, tmp_path / "run", torch.device("cpu"), starting)
    (tmp_path / "run").mkdir()
    networks = networks_of(cfg)
    for stage, res in enumerate((16, 32), start=2):
        assert evaluator.evaluate(networks, res, 1.0, 100 * stage, stage)["swd_at_init"] > 0
    assert len(built) == 1
