"""One training step of the three networks: the energy model's contrastive step on real
against generated images, then one backward pass of the joint loss for the generator and the
inference model; their averages."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs

from progressive.config.schedule import NETWORKS, Phase
from progressive.config.sections import Config
from progressive.config.sizing import default_device
from progressive.core.float32 import set_deterministic_convolutions, set_float32_math
from progressive.core.images import to_float
from progressive.data.masks import fade_mask, fill
from progressive.model.langevin import langevin
from progressive.model.layers import fade_real
from progressive.model.networks import AVERAGE_OF, OPTIONAL_AVERAGES, initial_networks
from progressive.train import amp, distributed, precision
from progressive.train import loss as triangle
from progressive.train.outliers import random_scale_noise


def step_generator(
    seed: int, rank: int, images_shown: int, device: torch.device
) -> torch.Generator:
    """Noise for one step, derived from (seed, rank, images shown) so a resumed run repeats it."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + rank * 10_007 + images_shown) % (2**63))
    return g


def make_accelerator(cfg: Config, project_dir: str | os.PathLike | None = None) -> Accelerator:
    """The accelerator for a run: its mixed precision and tracker (writing under
    `project_dir`, the run folder); DDP told that blocks above the current resolution (and the
    faded-out RGB adapter) are legitimately unused."""
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # The device type as accelerate will pick it, without starting accelerate's process state
    # before the Accelerator does (that would leave each rank a process of its own).
    chosen = precision.resolve(cfg.run.mixed_precision, default_device())
    group = distributed.process_group_kwargs(cfg.run.process_timeout_s)
    return Accelerator(mixed_precision=chosen, kwargs_handlers=[ddp, group],
                       log_with=cfg.run.log_with, project_dir=project_dir)


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
