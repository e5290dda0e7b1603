"""The training loop: three networks, one schedule, accelerate for devices and processes.

Per step: the inference model encodes real images, the generator decodes posterior and prior
latents in one pass, the energy model takes its contrastive step on real vs generated images,
then one backward pass of the joint loss updates generator and inference model.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from torch.utils.data import Subset
from tqdm import tqdm

from progressive.config.presets import check_same_networks
from progressive.config.schedule import NETWORKS, Phase, Schedule
from progressive.config.sections import Config, replace
from progressive.core.errors import UserError, one_line
from progressive.core.files import append_jsonl, write_json_atomic
from progressive.core.float32 import set_deterministic_convolutions, set_float32_math
from progressive.core.grids import pairs, save_grid
from progressive.core.images import to_float
from progressive.data.format import META_NAME, read_meta
from progressive.data.masks import fade_mask, fill
from progressive.data.reader import ImageDataset, make_loader
from progressive.metrics import stage as evaluation
from progressive.model.langevin import langevin
from progressive.model.networks import (
    AVERAGE_OF,
    OPTIONAL_AVERAGES,
    fade_real,
    in_use,
    initial_networks,
)
from progressive.run import checkpoint as ckpt
from progressive.run import folder as layout
from progressive.run.lock import RunLock, Watchdog
from progressive.train import amp, distributed, pca_path, precision, signals
from progressive.train import loss as triangle
from progressive.train.outliers import random_scale_noise


def step_generator(
    seed: int, rank: int, images_shown: int, device: torch.device
) -> torch.Generator:
    """Noise for one step, derived from (seed, rank, images shown) so a resumed run repeats it."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + rank * 10_007 + images_shown) % (2**63))
    return g


def make_accelerator(cfg: Config) -> Accelerator:
    """The accelerator for a run: its mixed precision; DDP told that blocks above the current
    resolution (and the faded-out RGB adapter) are legitimately unused."""
    from progressive.config.sizing import default_device

    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # The device type as accelerate will pick it, without starting accelerate's process state
    # before the Accelerator does (that would leave each rank a process of its own).
    chosen = precision.resolve(cfg.run.mixed_precision, default_device())
    group = distributed.process_group_kwargs(cfg.run.process_timeout_s)
    return Accelerator(mixed_precision=chosen, kwargs_handlers=[ddp, group])


class GeneratorInference(torch.nn.Module):
    """Generator and inference model as one module, so DDP sees one forward per backward.

    Encodes real images, decodes posterior and prior latents in one generator pass, and encodes
    the generated images again (the sleep phase)."""

    def __init__(self, generator: torch.nn.Module, inference: torch.nn.Module):
        super().__init__()
        self.generator, self.inference = generator, inference

    def forward(self, x: torch.Tensor, z: torch.Tensor, eps: torch.Tensor, res: int, alpha: float):
        mu, logvar = self.inference(x, alpha)
        z_post = mu + torch.exp(0.5 * logvar.float()) * eps
        x_rec, x_fake = self.generator(torch.cat([z_post, z]), res, alpha).split(x.shape[0])
        mu_fake, logvar_fake = self.inference(x_fake, alpha)
        return mu, logvar, x_rec, x_fake, mu_fake, logvar_fake


@dataclass
class Trainer:
    """Networks (possibly DDP-wrapped), optimizers and the accelerator of one run."""

    cfg: Config
    accelerator: Accelerator
    pair: torch.nn.Module  # GeneratorInference, as prepared by accelerate
    energy: torch.nn.Module
    generator_ema: torch.nn.Module
    optimizers: dict[str, torch.optim.Optimizer]
    averages: dict[str, torch.nn.Module] = field(default_factory=dict)  # optional averages

    @classmethod
    def create(cls, cfg: Config, accelerator: Accelerator | None = None) -> Trainer:
        """Build networks and Adam optimizers at full size and hand them to accelerate."""
        accelerator = accelerator or make_accelerator(cfg)
        set_float32_math(cfg.run.tf32)
        set_deterministic_convolutions()  # bit-exact resume on GPUs too
        nets = initial_networks(cfg)
        fused = accelerator.device.type == "cuda"  # one kernel per Adam update on GPUs
        opts = {}
        for name in NETWORKS:
            wd = cfg.optim.weight_decay_generator if name == "generator" else 0.0
            opts[name] = torch.optim.Adam(
                nets[name].parameters(),
                lr=cfg.optim.lr_tables()[name][cfg.schedule.start_res],
                betas=cfg.optim.betas_of(name),
                eps=1e-8,
                weight_decay=wd,
                fused=fused or None,
            )
        pair = GeneratorInference(nets["generator"], nets["inference"])
        distributed.skip_fixed_buffers(pair)  # the PCA path's: set once, never broadcast
        pair, energy, og, oe, oi = accelerator.prepare(
            pair, nets["energy"], opts["generator"], opts["energy"], opts["inference"]
        )
        ema = nets["generator_ema"].to(accelerator.device)
        averages = {n: nets[n].to(accelerator.device) for n in OPTIONAL_AVERAGES if n in nets}
        return cls(
            cfg, accelerator, pair, energy, ema, {"generator": og, "energy": oe, "inference": oi},
            averages,
        )

    @property
    def generator(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.pair).generator

    @property
    def inference(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.pair).inference

    def unwrapped(self) -> dict[str, torch.nn.Module]:
        return {
            "generator": self.generator,
            "generator_ema": self.generator_ema,
            "energy": self.accelerator.unwrap_model(self.energy),
            "inference": self.inference,
            **self.averages,
        }

    def set_lr(self, phase: Phase) -> None:
        for name, opt in self.optimizers.items():
            for group in opt.param_groups:
                group["lr"] = phase.lr[name]

    def reset_optimizers(self) -> None:
        for opt in self.optimizers.values():
            opt.state.clear()

    def step(
        self, real: torch.Tensor, phase: Phase, images_shown: int, mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """One training step on a batch of uint8 real images (and their uint8 observation
        masks, 1 = observed, for incomplete data); returns detached loss terms."""
        acc, cfg, w = self.accelerator, self.cfg, self.cfg.loss
        res, alpha = phase.res, phase.alpha
        x = fade_real(to_float(real.to(acc.device, non_blocking=True)), alpha)
        n = x.shape[0]
        gen = step_generator(cfg.run.seed, acc.process_index, images_shown, acc.device)
        z = torch.randn(n, cfg.networks.latent, device=acc.device, generator=gen)
        eps = torch.randn(n, cfg.networks.latent, device=acc.device, generator=gen)
        observed = None
        if mask is not None:
            observed = fade_mask(mask.to(acc.device, non_blocking=True), alpha)  # pinned
            x = self.fill_missing(x, observed, res, alpha)

        with acc.autocast():
            mu, logvar, x_rec, x_fake, mu_fake, logvar_fake = self.pair(x, z, eps, res, alpha)

        # Energy: contrastive step on real vs (detached) generated images.
        r1 = bool(w.energy_r1)
        x_real = x.detach().requires_grad_(True) if r1 else x
        x_negative, move = x_fake.detach(), None
        if w.langevin_steps:
            x_negative = self.refine_negatives(x_negative, alpha, gen)
            move = (x_negative - x_fake.detach().float()).square().mean().sqrt()
        seen = [x_real, x_negative]
        outliers = bool(w.energy_outliers)
        if outliers:  # drawn last from the step's stream, so nothing else in the step moves
            seen.append(random_scale_noise(n, res, gen))
        with acc.autocast():
            energies = self.energy(torch.cat(seen), alpha)
            loss_e, stats = triangle.energy_loss(energies[:n], energies[n : 2 * n], w)
            if outliers:
                ranking = triangle.outlier_ranking(energies[:n], energies[2 * n :])
                loss_e = loss_e + w.energy_outliers * ranking
                stats["energy_outliers"], stats["loss_energy"] = ranking.detach(), loss_e.detach()
            if r1:
                penalty = triangle.data_gradient_penalty(energies[:n], x_real)
                loss_e = loss_e + 0.5 * w.energy_r1 * penalty
                stats["energy_r1"], stats["loss_energy"] = penalty.detach(), loss_e.detach()
        if move is not None:  # root-mean-square change of a pixel by the chain
            stats["langevin_move"] = move
        opt_e = self.optimizers["energy"]
        opt_e.zero_grad(set_to_none=True)
        acc.backward(loss_e)
        stats["grad_norm_energy"] = self._clip(opt_e, self.energy)
        amp.step(acc, opt_e)

        # Generator and inference: one backward through the joint loss; the energy model is
        # evaluated unwrapped with frozen weights so only its input receives gradients.
        energy_frozen = acc.unwrap_model(self.energy).requires_grad_(False)
        with acc.autocast():
            e_fake = energy_frozen(x_fake, alpha)
            everyone = distributed.gather_batch(mu, logvar, z)  # the batch over all ranks
            loss_j, joint = triangle.joint_loss(
                x, x_rec, mu, logvar, z, mu_fake, logvar_fake, e_fake, res, w, observed, everyone
            )
        stats.update(joint)
        opt_g, opt_i = self.optimizers["generator"], self.optimizers["inference"]
        opt_g.zero_grad(set_to_none=True)
        opt_i.zero_grad(set_to_none=True)
        acc.backward(loss_j)
        energy_frozen.requires_grad_(True)
        stats["grad_norm_generator"] = self._clip(opt_g, self.generator)
        stats["grad_norm_inference"] = self._clip(opt_i, self.inference)
        amp.step(acc, opt_g)
        amp.step(acc, opt_i)
        amp.update_scale(acc)  # once per step, whichever optimizers stepped
        self.update_ema(phase.batch)
        return {k: v.detach().float() for k, v in stats.items()}

    def refine_negatives(
        self, x_fake: torch.Tensor, alpha: float, gen: torch.Generator
    ) -> torch.Tensor:
        """The energy's negatives: generated images moved by `energy_langevin` short-run
        Langevin steps on the current energy, clamped to [-1, 1] (fp32, detached).

        The generator's samples show the energy only where the generator already puts mass;
        a chain on E itself also visits the low-energy regions the energy has wrongly made,
        and the contrastive step raises them. The chain's noise comes from this step's
        seeded stream, so a resumed run repeats it."""
        w, acc = self.cfg.loss, self.accelerator
        noise = None  # plain descent (the default) draws nothing: no device sync per step
        if w.langevin_noise > 0:  # one draw from `gen`, before the outliers
            seed = int(torch.randint(2**62, (1,), generator=gen, device=gen.device))
            noise = torch.Generator().manual_seed(seed)
        energy = acc.unwrap_model(self.energy).requires_grad_(False)
        try:
            with acc.autocast():
                return langevin(
                    lambda v: energy(v, alpha), x_fake.float().clamp(-1.0, 1.0),
                    w.langevin_steps, w.langevin_step_size, w.langevin_noise, generator=noise,
                    project=lambda v: v.clamp(-1.0, 1.0),
                ).float()
        finally:
            energy.requires_grad_(True)

    @torch.no_grad()
    def fill_missing(
        self, x: torch.Tensor, observed: torch.Tensor, res: int, alpha: float
    ) -> torch.Tensor:
        """Missing pixels replaced by the model's completion g(mu(x0)), x0 being x with its
        missing pixels set to 0 (mid-grey): one EM-style step, detached (see the README)."""
        acc = self.accelerator
        x0 = fill(x, observed, torch.zeros_like(x))
        with acc.autocast():
            mu, _ = self.inference(x0, alpha)
            x_hat = self.generator(mu, res, alpha)
        return fill(x, observed, x_hat.float())

    def _clip(self, optimizer: torch.optim.Optimizer, network: torch.nn.Module) -> torch.Tensor:
        """Clip one network's gradient norm; returns the norm before clipping.

        Only this optimizer's gradients are unscaled (fp16): accelerate's clip_grad_norm_
        unscales every optimizer, which fails for the second network after one backward."""
        self.accelerator.unscale_gradients(optimizer)
        return torch.nn.utils.clip_grad_norm_(network.parameters(), self.cfg.optim.grad_clip)

    @torch.no_grad()
    def update_ema(self, batch: int) -> None:
        half_lives = self.cfg.optim.half_lives()
        _average(self.generator_ema, self.generator, half_lives["generator"], batch)
        if not self.averages:
            return
        sources = self.unwrapped()
        for name, average in self.averages.items():
            of = AVERAGE_OF[name]
            _average(average, sources[of], half_lives[of], batch)


def _average(average: torch.nn.Module, source: torch.nn.Module, half_life_kimg: float,
             batch: int) -> None:
    """Move `average` toward `source` by one batch of a `half_life_kimg` exponential average;
    buffers (batch-norm statistics of the reference networks) are copied as they are."""
    beta = 0.5 ** (batch / max(half_life_kimg * 1000, 1e-8))
    src = list(source.parameters())
    torch._foreach_lerp_(list(average.parameters()), src, 1.0 - beta)
    for avg_buf, buf in zip(average.buffers(), source.buffers(), strict=True):
        avg_buf.copy_(buf)


def render_builtin_dataset(path: Path, max_res: int, count: int) -> None:
    """Render the built-in synthetic dataset once; later runs reuse it. Raw pixels up to
    256 px, JPEG above (`sizing.builtin_encoding`), so 1024 px stays small and quick."""
    from progressive.config.sizing import builtin_encoding
    from progressive.data.synthetic import SyntheticSource
    from progressive.data.writer import write_dataset

    if not (path / META_NAME).exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_dataset(
            SyntheticSource(str(count)), str(path), max_res,
            encoding=builtin_encoding(max_res), overwrite=True,
        )


def check_dataset(path: str | os.PathLike, max_res: int, holdout: float = 0.0) -> dict:
    """Validate that the dataset exists, has every resolution training needs, and is large
    enough to hold out `holdout` of its images for evaluation."""
    meta = read_meta(path)
    if meta["max_res"] < max_res:
        raise UserError(
            f"--max-res {max_res} is above the dataset's max_res {meta['max_res']} "
            f"({path}); lower --max-res or rebuild the dataset"
        )
    evaluation.check_holdout(meta["count"], holdout, f"dataset {path}")
    return meta


def dataset_max_res(path: str | os.PathLike) -> int:
    """The largest resolution the dataset at `path` stores."""
    return int(read_meta(path)["max_res"])


def check_data(cfg: Config) -> None:
    """Everything about the run's data that can be checked before anything is written."""
    data = cfg.data
    if data.path is not None:
        meta = check_dataset(data.path, cfg.schedule.max_res, data.holdout)
        count, has_masks, where = meta["count"], "masks" in meta, f"dataset {data.path}"
    else:
        where = "the built-in dataset"
        evaluation.check_holdout(data.synthetic_count, data.holdout, where)
        count, has_masks = data.synthetic_count, False
    if cfg.networks.pca_path:
        pca_path.check_data(cfg, count, has_masks, where)


def _save_grids(
    trainer: Trainer, run_dir: Path, fixed: dict, phase: Phase, images_shown: int
) -> None:
    g = trainer.generator_ema
    inference = in_use(trainer.unwrapped(), "inference")  # the pair evaluation uses
    res, alpha = phase.res, phase.alpha
    with torch.no_grad():
        samples = g(fixed["z"], res, alpha)
        real = fade_real(to_float(fixed["real"][res]), alpha)
        encoded = real
        if res in fixed["mask"]:
            # Incomplete data: the grid shows what training sees, missing pixels mid-grey,
            # and reconstructs from the model's completion, as in training.
            observed = fade_mask(fixed["mask"][res], alpha)
            encoded = trainer.fill_missing(real, observed, res, alpha)
            real = fill(real, observed, torch.zeros_like(real))
        recon = g(inference(encoded, alpha)[0], res, alpha)
    n = trainer.cfg.run.grid_size
    save_grid(samples, layout.grid_file(run_dir, "samples", res, images_shown), nrow=n)
    # Real images in even columns, their reconstructions beside them.
    save_grid(pairs(real, recon), layout.grid_file(run_dir, "reconstructions", res, images_shown),
              nrow=n)


def _resolve_data(cfg: Config, run_dir: Path, acc: Accelerator) -> Config:
    """The config with its dataset path resolved (the built-in data rendered once if the run
    has none), written to the run folder's config.json."""
    check_data(cfg)  # before anything is rendered or written
    if cfg.data.path is None:
        max_res, count = cfg.schedule.max_res, cfg.data.synthetic_count
        path = layout.builtin_dataset_path(run_dir.parent, max_res, count)
        if acc.is_main_process:
            render_builtin_dataset(path, max_res, count)
        acc.wait_for_everyone()
        cfg = replace(cfg, {"data.path": str(path)})
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / layout.CONFIG_NAME, cfg.to_dict())
    return cfg


def _fixed_inputs(cfg: Config, schedule: Schedule, device: torch.device) -> dict:
    """The latents and real images every grid of the run shows, the same at every stage."""
    grid = cfg.run.grid_size
    seeded = torch.Generator().manual_seed(cfg.run.seed)
    z = torch.randn(grid * grid, cfg.networks.latent, generator=seeded).to(device)
    fixed = {"z": z, "real": {}, "mask": {}}
    for res in schedule.resolutions:
        ds = ImageDataset(cfg.data.path, res)
        indices = list(range(min(grid * grid // 2, len(ds))))
        fixed["real"][res] = ds.batch(indices).to(device)
        if ds.has_masks:
            fixed["mask"][res] = ds.masks(indices).to(device)
    return fixed


class _Ticks:
    """Step statistics summed between ticks; at a tick they are averaged over steps and
    processes, appended to stats.jsonl and shown on the progress bar."""

    def __init__(self, acc: Accelerator, stats_file: Path, bar: tqdm, images_shown: int):
        self.acc, self.stats_file, self.bar = acc, stats_file, bar
        self._reset(images_shown)

    def _reset(self, images_shown: int) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps, self.start, self.start_images = 0, time.perf_counter(), images_shown

    def restart_clock(self) -> None:
        self.start = time.perf_counter()

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1

    def log(self, images_shown: int, phase: Phase) -> None:
        means = {k: (self.acc.reduce(v, "mean") / self.steps).item() for k, v in self.sums.items()}
        elapsed = time.perf_counter() - self.start
        shown = images_shown - self.start_images
        record = {
            "images_shown": images_shown,
            "kimg": images_shown / 1000,
            "stage": phase.stage,
            "res": phase.res,
            "alpha": round(phase.alpha, 6),
            "batch": phase.batch,
            "mixed_precision": self.acc.mixed_precision,
            "images_per_s": shown / max(elapsed, 1e-9),
            "sec_per_kimg": elapsed * 1000 / max(shown, 1),
            **means,
            "time": time.time(),
        }
        if self.acc.is_main_process:
            append_jsonl(self.stats_file, record)
        self.bar.set_postfix_str(
            f"stage {phase.stage} {phase.res}px a={phase.alpha:.2f} "
            f"rec/px={means['rec_per_pixel']:.3f} "
            f"E+={means['energy_real']:.2f} E-={means['energy_fake']:.2f} "
            f"{record['images_per_s']:.0f} img/s"
        )
        self._reset(images_shown)


def _save(
    trainer: Trainer, cfg: Config, run_dir: Path, images_shown: int, resumed: Path | None = None
) -> Path | None:
    """A snapshot at `images_shown`, written by the main process once all have arrived;
    None (on every rank) when it was refused for non-finite tensors. Older snapshots beyond
    `keep_snapshots` are deleted then, never the one the run was `resumed` from."""
    acc = trainer.accelerator
    acc.wait_for_everyone()
    refused = None
    if acc.is_main_process:
        try:
            ckpt.save_snapshot(run_dir, images_shown, cfg, trainer.unwrapped(), trainer.optimizers)
            ckpt.prune_snapshots(run_dir, cfg.run.keep_snapshots, ckpt.stage_boundaries(cfg),
                                 [resumed])
        except ckpt.NonFiniteError as e:
            refused = str(e)
    if _agree(acc, refused) is not None:
        return None
    return layout.snapshot_dir(run_dir, images_shown)


def _agree(acc: Accelerator, value: str | None) -> str | None:
    """The main process's `value` on every rank."""
    if acc.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def step_is_finite(stats: dict[str, torch.Tensor], precision: str) -> torch.Tensor:
    """Whether a step's losses and gradients were finite, as a 0-dim bool tensor on the
    step's device. The gradient norms are taken after the all-reduce, so every rank reaches
    the same verdict at the same step; a non-finite loss on any rank makes every rank's
    gradients non-finite. Under fp16 the loss scaler skips steps with overflowing gradients
    by design, so only the local losses count there."""
    keys = [k for k in stats if k.startswith("loss") or
            (precision != "fp16" and k.startswith("grad_norm"))]
    return torch.isfinite(torch.stack([stats[k] for k in keys])).all()


class FiniteSteps:
    """Every step checked for non-finite losses and gradients. On the CPU the verdict is read
    at once; on a GPU it is folded into a flag on the device and read at each tick and before
    each snapshot, so the check never makes the host wait for the GPU."""

    def __init__(self, device: torch.device, precision: str, images_shown: int = 0):
        self.at_once = device.type == "cpu"
        self.precision = precision
        self.flag: torch.Tensor | None = None
        self.since = images_shown

    def add(self, stats: dict[str, torch.Tensor], images_shown: int) -> str | None:
        """None, or where training diverged (this step)."""
        ok = step_is_finite(stats, self.precision)
        if self.at_once:
            return None if bool(ok) else f"at {images_shown:,} images"
        self.flag = ok if self.flag is None else self.flag & ok
        return None

    def confirm(self, images_shown: int) -> str | None:
        """None, or where training diverged (a step since the last confirmation)."""
        flag, self.flag = self.flag, None
        since, self.since = self.since, images_shown
        if flag is None or bool(flag):
            return None
        return f"between {since:,} and {images_shown:,} images"


def _diverged(where: str, last_good: Path | None, why: str) -> UserError:
    if last_good is None:
        then = "no snapshot of this run is usable; start again with a lower --lr"
    else:
        then = (f"the last good snapshot is {last_good}: continue from it with a lower --lr "
                f"(progressive train --resume {last_good} --lr ...)")
    return UserError(f"training diverged {where} ({why}); {then}")


def _next_batch(loader_iter, data: str) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The next batch; a worker that died (a signal while decoding) becomes a one-line error."""
    try:
        return next(loader_iter)
    except RuntimeError as e:
        if "DataLoader worker" not in str(e):
            raise
        raise UserError(
            f"a data loader process died reading {data} ({one_line(e)}); check the dataset "
            f"with `progressive info {data} --verify`"
        ) from None


def _save_reals(fixed: dict, run_dir: Path, res: int, grid: int) -> None:
    path = layout.reals_file(run_dir, res)
    if not path.exists():
        real = to_float(fixed["real"][res])
        if res in fixed["mask"]:  # missing pixels mid-grey: what training sees
            real = fill(real, fixed["mask"][res].float(), torch.zeros_like(real))
        save_grid(real, path, nrow=grid)


def train(
    cfg: Config,
    run_dir: str | os.PathLike,
    snapshot: str | os.PathLike | None = None,
    progress: bool = True,
    accelerator: Accelerator | None = None,
) -> Path:
    """Train (or continue from `snapshot`) until `total_kimg`; returns the final snapshot."""
    run_dir = Path(run_dir)
    if cfg.run.log_with is not None:
        raise UserError(f"run.log_with {cfg.run.log_with}: trackers are not supported yet; "
                        "every tick is in the run's stats.jsonl")
    schedule = Schedule.from_config(cfg)
    total = schedule.total(cfg)
    trainer = Trainer.create(cfg, accelerator)
    acc = trainer.accelerator
    world, rank = acc.num_processes, acc.process_index
    for res in schedule.resolutions:
        if cfg.schedule.batch[res] % world:
            raise UserError(
                f"batch {cfg.schedule.batch[res]} at {res}px does not divide over {world} "
                "processes"
            )

    # One writer per run folder: the main process holds the lock until training ends; the
    # kernel drops it if the process dies. Every rank learns whether it was taken.
    lock, refused = None, None
    if acc.is_main_process:
        try:
            lock = RunLock.acquire(run_dir)
        except UserError as e:
            refused = str(e)
    refused = _agree(acc, refused)
    if refused is not None:
        raise UserError(refused)
    watchdog = Watchdog.start_if_launched(rank, world)
    try:
        final = _train_locked(cfg, run_dir, snapshot, progress, trainer, schedule, total)
    except RuntimeError as e:
        if world == 1 or not _is_collective_failure(e):
            raise
        raise UserError(
            f"rank {rank} lost the other processes ({one_line(e)[:160]}); stopping; continue "
            "with --resume auto"
        ) from None
    finally:
        if watchdog is not None:
            watchdog.done()
        if lock is not None:
            lock.release()
    return final


def _is_collective_failure(e: RuntimeError) -> bool:
    """Whether `e` comes from a collective whose peer went away (gloo, NCCL)."""
    if isinstance(e, torch.distributed.DistError):
        return True
    text = str(e)
    return any(s in text for s in ("gloo", "NCCL", "Connection reset", "Connection closed"))


def _train_locked(
    cfg: Config, run_dir: Path, snapshot: str | os.PathLike | None, progress: bool,
    trainer: Trainer, schedule: Schedule, total: int,
) -> Path:
    acc = trainer.accelerator
    world, rank = acc.num_processes, acc.process_index
    if acc.is_main_process:
        for line in ckpt.clean_run_dir(run_dir):  # what killed runs left behind
            acc.print(f"run folder {run_dir}: {line}")
    images_shown = 0
    last_good = None
    if snapshot is not None:
        snapshot = layout.resolve_snapshot(snapshot)
        images_shown = ckpt.read_state(snapshot)["images_shown"]
        ckpt.load_weights(snapshot, trainer.unwrapped())
        ckpt.load_optimizers(snapshot, trainer.optimizers)
        last_good = snapshot
    cfg = _resolve_data(cfg, run_dir, acc)
    dataset_meta = check_dataset(cfg.data.path, cfg.schedule.max_res, cfg.data.holdout)
    train_count, held = evaluation.split_counts(dataset_meta["count"], cfg.data.holdout)
    fixed = _fixed_inputs(cfg, schedule, acc.device)
    evaluator = (
        evaluation.StageEvaluator(cfg, run_dir, acc.device, pca_path.starting_networks)
        if acc.is_main_process else None
    )

    def evaluate(phase: Phase, shown: int) -> None:
        if evaluator is not None and evaluator.enabled:
            record = evaluator.evaluate(trainer.unwrapped(), phase.res, phase.alpha, shown,
                                        phase.stage)
            tqdm.write(evaluation.summary_line(record))

    final = None
    # Threads beyond the cores (several runs side by side) slow every run many times over.
    where = f"cpu ({torch.get_num_threads()} threads)" if acc.device.type == "cpu" else acc.device
    acc.print(
        f"training on {train_count} of {dataset_meta['count']} images from {cfg.data.path} "
        f"(the last {held} held out for evaluation), {world} process(es), {where}, "
        f"{precision.describe(cfg.run.mixed_precision, acc.device)}; run folder {run_dir}"
    )
    if images_shown == 0 and cfg.networks.pca_path:  # on every rank: the same fit
        pca_path.install(trainer.unwrapped(), pca_path.training_fit(cfg))
        distributed.broadcast_fixed_buffers(trainer.unwrapped())
    if images_shown == 0:  # the starting point, for metrics against initialization
        final = last_good = _save(trainer, cfg, run_dir, 0)
        if acc.is_main_process:
            _save_grids(trainer, run_dir, fixed, schedule.at(0), 0)
        evaluate(schedule.at(0), 0)
    bar = tqdm(total=total, initial=images_shown, unit="img", unit_scale=True,
               dynamic_ncols=True, disable=not (progress and acc.is_local_main_process))
    ticks = _Ticks(acc, run_dir / layout.STATS_NAME, bar, images_shown)
    tick_every = max(1, round(cfg.run.tick_kimg * 1000))
    snap_every = max(1, round(cfg.run.snapshot_kimg * 1000))
    # The stage of the last completed step (None before the first), so a run resumed at a stage
    # boundary resets its optimizers as an uninterrupted one does.
    stage = schedule.stage_of(images_shown - 1) if images_shown > 0 else None
    batches = None  # this stage's loader, built anew at each stage (workers prefetch ahead)
    finite = FiniteSteps(acc.device, acc.mixed_precision, images_shown)  # auto resolved
    stop = signals.StopOnSignal(world)
    try:  # the bar is closed first, so an error is printed on a line of its own
        stop.install()
        while images_shown < total:
            if stop.agreed():  # SIGTERM: a snapshot at this step boundary, then stop
                if final != layout.snapshot_dir(run_dir, images_shown):
                    final = _save(trainer, cfg, run_dir, images_shown, snapshot) or last_good
                raise signals.stopped(stop.received, images_shown, final)
            phase = schedule.at(images_shown)
            if batches is None or phase.stage != stage:
                if stage is not None and phase.stage != stage and cfg.optim.reset_optimizers:
                    trainer.reset_optimizers()
                stage = phase.stage
                # The last stage's workers and their queue threads go before new workers fork:
                # a fork while another thread is exiting can leave the child deadlocked.
                batches = None
                # The held-out images (the last ones) are never trained on.
                dataset = Subset(ImageDataset(cfg.data.path, phase.res), range(train_count))
                batches = iter(make_loader(
                    dataset, phase.batch // world, rank=rank, world_size=world, seed=cfg.run.seed,
                    start=images_shown // world, workers=cfg.data.workers,
                    pin_memory=acc.device.type == "cuda",
                ))
                if acc.is_main_process:
                    _save_reals(fixed, run_dir, phase.res, cfg.run.grid_size)
            trainer.set_lr(phase)
            batch = _next_batch(batches, cfg.data.path)
            real, mask = batch if isinstance(batch, tuple | list) else (batch, None)
            stats = trainer.step(real, phase, images_shown, mask)
            if (where := finite.add(stats, images_shown)) is not None:
                raise _diverged(where, last_good, "non-finite loss or gradient")
            ticks.add(stats)
            before, images_shown = images_shown, images_shown + phase.batch
            bar.update(phase.batch)

            stage_done = phase.stage_end is not None and images_shown >= phase.stage_end
            done = images_shown >= total
            tick = images_shown // tick_every != before // tick_every or stage_done or done
            snap = images_shown // snap_every != before // snap_every or stage_done or done
            if (tick or snap) and (where := finite.confirm(images_shown)) is not None:
                raise _diverged(where, last_good, "non-finite loss or gradient")
            if tick:
                ticks.log(images_shown, phase)
            if acc.is_main_process and (stage_done or done):
                _save_grids(trainer, run_dir, fixed, phase, images_shown)
            if stage_done or done:
                evaluate(phase, images_shown)  # the stage that just ended, not the next one
                ticks.restart_clock()  # images/s counts training, not the evaluation
            if snap:
                final = _save(trainer, cfg, run_dir, images_shown, snapshot)
                if final is None:
                    where = f"at {images_shown:,} images"
                    raise _diverged(where, last_good, "non-finite weights, not saved")
                last_good = final
    finally:
        stop.restore()
        bar.close()
    acc.wait_for_everyone()
    return final or layout.snapshot_dir(run_dir, images_shown)


def resolve_run(
    cfg: Config, values: dict, out: Path, name: str | None, resume: str | None, notify=print
) -> tuple[Config, Path, Path | None]:
    """Pick the run folder and the snapshot to continue from.

    A resumed run keeps its saved configuration, with only the `section.field` values given
    explicitly now set over it, e.g. a larger `schedule.total_kimg`.
    """
    if resume is None:
        check_data(cfg)  # a resumed run's data is checked with its own configuration below
    snapshot = source = None  # source: the snapshot whose configuration continues
    branching = False
    if resume not in (None, "auto"):
        snapshot = source = layout.resolve_snapshot(resume)
        ckpt.check_snapshot(snapshot)
        run_dir = snapshot.parent
        if name is not None and (out / name).resolve() != run_dir.resolve():
            run_dir = out / name  # a branch: the source run stays as it is
            branching = True
    else:
        run_dir = out / (name or layout.run_name(cfg))
        existing = layout.list_snapshots(run_dir)
        if existing and resume is None:
            raise UserError(
                f"run {run_dir} already has snapshots; pass --resume auto to continue "
                "it, or --name to start another run"
            )
        snapshot = source = ckpt.newest_usable_snapshot(run_dir, notify) if existing else None
        if existing and snapshot is None:
            raise UserError(
                f"run {run_dir} has no usable snapshot (each is damaged or non-finite, see "
                "above); pass --name to start another run"
            )
    if snapshot is not None:
        saved = ckpt.read_state(source)["config"]
        cfg = replace(saved, values)
        check_same_networks(saved, cfg, source)
    if resume is not None:
        check_data(cfg)
    if branching:  # once everything is checked
        snapshot = _branch(source, run_dir)
    return cfg, run_dir, snapshot


def _branch(snapshot: Path, run_dir: Path) -> Path:
    """The branch's copy of `snapshot` in `run_dir`, made by the main process only (several
    would race on one folder); the others get its path, which they read only after training's
    first collective has met the main process."""
    shown = ckpt.read_state(snapshot)["images_shown"]
    if distributed.launched_rank() != 0:
        return layout.snapshot_dir(run_dir, shown)
    return layout.branch(snapshot, shown, run_dir)

