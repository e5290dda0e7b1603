"""The training loop: one schedule, snapshots, stage-end evaluations and grids, resume and
branching, accelerate for devices and processes."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import Subset
from tqdm import tqdm

from progressive.config.keys import replace
from progressive.config.presets import check_same_networks
from progressive.config.schedule import Phase, Schedule
from progressive.config.sections import Config
from progressive.core.errors import UserError, one_line
from progressive.core.files import write_json_atomic
from progressive.core.grids import grid_side, pairs, save_grid
from progressive.core.images import to_float
from progressive.data.masks import fade_mask, fill
from progressive.data.reader import ImageDataset, make_loader
from progressive.metrics import stage as evaluation
from progressive.model.layers import fade_real
from progressive.model.networks import in_use
from progressive.run import checkpoint as ckpt
from progressive.run import folder as layout
from progressive.run import loading
from progressive.run.lock import RunLock, Watchdog
from progressive.train import distributed, pca_path, precision, signals, tracking
from progressive.train.data import check_data, check_dataset, render_builtin_dataset
from progressive.train.monitor import FiniteSteps, Ticks, agree, diverged
from progressive.train.tracking import Tracking
from progressive.train.trainer import Trainer, make_accelerator


def _save_grids(
    trainer: Trainer, run_dir: Path, fixed: dict, phase: Phase, images_shown: int
) -> dict[str, torch.Tensor]:
    """The sample and reconstruction grids of this point, saved; returned by name."""
    g = trainer.generator_ema
    inference = in_use(trainer.unwrapped(), "inference")  # the pair evaluation uses
    res, alpha = phase.res, phase.alpha
    n = grid_side(trainer.cfg.run.grid_size, res)
    with torch.no_grad():
        samples = g(fixed["z"][: n * n], res, alpha)
        real = fade_real(to_float(fixed["real"][res][: n * n // 2]), alpha)
        encoded = real
        if res in fixed["mask"]:
            # Incomplete data: the grid shows what training sees, missing pixels mid-grey,
            # and reconstructs from the model's completion, as in training.
            observed = fade_mask(fixed["mask"][res][: n * n // 2], alpha)
            encoded = trainer.fill_missing(real, observed, res, alpha)
            real = fill(real, observed, torch.zeros_like(real))
        recon = g(inference(encoded, alpha)[0], res, alpha)
    # Real images in even columns, their reconstructions beside them.
    grids = {"samples": samples, "reconstructions": pairs(real, recon)}
    for kind, images in grids.items():
        save_grid(images, layout.grid_file(run_dir, kind, res, images_shown), nrow=n)
    return grids


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
    if agree(acc, refused) is not None:
        return None
    return layout.snapshot_dir(run_dir, images_shown)


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
        n = grid_side(grid, res)
        real = to_float(fixed["real"][res][: n * n // 2])
        if res in fixed["mask"]:  # missing pixels mid-grey: what training sees
            real = fill(real, fixed["mask"][res][: n * n // 2].float(), torch.zeros_like(real))
        save_grid(real, path, nrow=n)


def train(
    cfg: Config,
    run_dir: str | os.PathLike,
    snapshot: str | os.PathLike | None = None,
    progress: bool = True,
    accelerator: Accelerator | None = None,
) -> Path:
    """Train (or continue from `snapshot`) until `total_kimg`; returns the final snapshot."""
    run_dir = Path(run_dir)
    tracking.check_tracker(cfg.run.log_with)
    schedule = Schedule.from_config(cfg)
    total = schedule.total(cfg)
    trainer = Trainer.create(cfg, accelerator or make_accelerator(cfg, run_dir))
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
    refused = agree(acc, refused)
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
        images_shown = loading.read_state(snapshot)["images_shown"]
        loading.load_weights(snapshot, trainer.unwrapped())
        loading.load_optimizers(snapshot, trainer.optimizers)
        last_good = snapshot
    cfg = _resolve_data(cfg, run_dir, acc)
    dataset_meta = check_dataset(cfg.data.path, cfg.schedule.max_res, cfg.data.holdout)
    train_count, held = evaluation.split_counts(dataset_meta["count"], cfg.data.holdout)
    fixed = _fixed_inputs(cfg, schedule, acc.device)
    evaluator = (
        evaluation.StageEvaluator(cfg, run_dir, acc.device, pca_path.starting_networks)
        if acc.is_main_process else None
    )

    tracker = Tracking(acc, cfg, run_dir)  # after config.json: the run folder exists

    def evaluate(phase: Phase, shown: int) -> None:
        if evaluator is not None and evaluator.enabled:
            record = evaluator.evaluate(trainer.unwrapped(), phase.res, phase.alpha, shown,
                                        phase.stage)
            tqdm.write(evaluation.summary_line(record))
            tracker.evaluation(record)

    def grids(phase: Phase, shown: int) -> None:
        if acc.is_main_process:
            tracker.grids(_save_grids(trainer, run_dir, fixed, phase, shown),
                          grid_side(cfg.run.grid_size, phase.res), shown)

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
        grids(schedule.at(0), 0)
        evaluate(schedule.at(0), 0)
    bar = tqdm(total=total, initial=images_shown, unit="img", unit_scale=True,
               dynamic_ncols=True, disable=not (progress and acc.is_local_main_process))
    ticks = Ticks(acc, run_dir / layout.STATS_NAME, bar, images_shown)
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
                raise diverged(where, last_good, "non-finite loss or gradient")
            ticks.add(stats)
            before, images_shown = images_shown, images_shown + phase.batch
            bar.update(phase.batch)

            stage_done = phase.stage_end is not None and images_shown >= phase.stage_end
            done = images_shown >= total
            tick = images_shown // tick_every != before // tick_every or stage_done or done
            snap = images_shown // snap_every != before // snap_every or stage_done or done
            if (tick or snap) and (where := finite.confirm(images_shown)) is not None:
                raise diverged(where, last_good, "non-finite loss or gradient")
            if tick:
                tracker.tick(ticks.log(images_shown, phase), phase.lr)
            if stage_done or done:
                grids(phase, images_shown)
                evaluate(phase, images_shown)  # the stage that just ended, not the next one
                ticks.restart_clock()  # images/s counts training, not the evaluation
            if snap:
                final = _save(trainer, cfg, run_dir, images_shown, snapshot)
                if final is None:
                    where = f"at {images_shown:,} images"
                    raise diverged(where, last_good, "non-finite weights, not saved")
                last_good = final
    finally:
        stop.restore()
        bar.close()
        tracker.end()
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
        loading.check_snapshot(snapshot)
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
        snapshot = source = loading.newest_usable_snapshot(run_dir, notify) if existing else None
        if existing and snapshot is None:
            raise UserError(
                f"run {run_dir} has no usable snapshot (each is damaged or non-finite, see "
                "above); pass --name to start another run"
            )
    if snapshot is not None:
        saved = loading.read_state(source)["config"]
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
    shown = loading.read_state(snapshot)["images_shown"]
    if distributed.launched_rank() != 0:
        return layout.snapshot_dir(run_dir, shown)
    return layout.branch(snapshot, shown, run_dir)
