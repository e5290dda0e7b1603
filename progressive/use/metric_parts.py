"""What several metrics of `progressive evaluate` need beyond the registry: recovery's fills,
energy-auroc's other sets and the previous snapshot's energies, the generator as training
started it, and the details of the quality metrics in one line each."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from progressive.core.errors import UserError
from progressive.core.images import to_uint8
from progressive.data.reader import ImageDataset
from progressive.model import budget
from progressive.model.networks import build_networks, in_use
from progressive.model.sampling import energies, prepare_real, sample
from progressive.run.folder import list_snapshots, snapshot_dir
from progressive.run.loading import LoadedRun, load_weights, read_state
from progressive.train import outliers
from progressive.train.pca_path import starting_networks
from progressive.use import inpaint
from progressive.use.generate import load_images

NOISE_PREFIX = "noise:"  # --ood noise:KIND, the built-in sets of images no dataset holds
RECON_FIT_IMAGES = 200  # held-out images whose codes recon-fit fits (300 generator steps each)


def faded(images: Tensor, alpha: float) -> Tensor:
    """uint8 images as the models see them at `alpha` (faded), still uint8, in chunks."""
    step = budget.image_batch(images.shape[-1])
    return torch.cat([to_uint8(prepare_real(images[i : i + step], alpha))
                      for i in range(0, len(images), step)])


def recovery(
    run: LoadedRun, ds: ImageDataset, real: Tensor, occlude: str | None, seed: int
) -> dict:
    """The recovery error of the model's completion, of the mean-colour fill and of the
    harmonic fill."""
    if occlude is not None:
        masks = inpaint.occlusion_masks(occlude, seed, len(real), ds.max_res, run.res)
        how = {"occlude": occlude, "mask_seed": seed}
    elif ds.has_masks:
        masks = ds.masks(list(range(len(real))))
        how = {"occlude": ds.meta["masks"].get("kind"), "mask_seed": ds.meta["masks"].get("seed")}
    else:
        raise UserError("--metrics recovery needs --occlude KIND or a dataset with masks")
    model = inpaint.recovery_error(inpaint.complete(run, real, masks), real, masks)
    mean = inpaint.recovery_error(inpaint.mean_colour_fill(real, masks), real, masks)
    harmonic = inpaint.recovery_error(inpaint.harmonic_fill(real, masks), real, masks)
    return {"value": model["mae"], "psnr": model["psnr"], "mean_colour_mae": mean["mae"],
            "mean_colour_psnr": mean["psnr"], "harmonic_mae": harmonic["mae"],
            "harmonic_psnr": harmonic["psnr"], "missing_share": model["missing_share"], **how}


def other_set(source: str, run: LoadedRun, n: int, seed: int) -> Tensor:
    """The `--ood` set `source` as uint8 images: `noise:KIND` is built in (see
    progressive.train.outliers), anything else a dataset or image folder."""
    kind = source.removeprefix(NOISE_PREFIX)
    if kind == source or Path(source).exists():
        return load_images(source, run.res, run.config.schedule.max_res, n, spread=True)[1]
    if kind not in outliers.KINDS:
        known = ", ".join(NOISE_PREFIX + k for k in outliers.KINDS)
        raise UserError(f"--ood {source}: unknown noise kind; use one of {known}")
    return outliers.noise_set(kind, n, run.res, seed)


def set_name(source: str, taken: dict) -> str:
    name, i = Path(source).name or str(source), 2
    while name in taken:
        name, i = f"{Path(source).name}-{i}", i + 1
    return name


def previous_energy(run: LoadedRun, real: Tensor, n: int, seed: int) -> dict | None:
    """Mean and std of the held-out energies, and of that snapshot's own samples' (`n`, the
    same latents as now), under the run's snapshot before this one (not the one at
    initialization), to see whether the energy's scale holds still."""
    earlier = [s for s in list_snapshots(run.run_dir) if s.name < Path(run.snapshot).name]
    earlier = [s for s in earlier if read_state(s)["images_shown"] > 0]
    if not earlier:
        return None
    cfg = run.config
    nets = build_networks(cfg.networks, cfg.schedule.max_res, cfg.optim.half_lives())
    load_weights(earlier[-1], nets)
    energy = in_use(nets, "energy").to(run.device).eval().requires_grad_(False)
    generator = in_use(nets, "generator").to(run.device).eval().requires_grad_(False)
    values = energies(energy, real, run.alpha)
    fake = sample(generator, n, seed, run.latent, run.res, run.alpha)
    on_samples = energies(energy, fake, run.alpha)  # as energy_auroc scores the samples now
    return {
        "snapshot": str(earlier[-1]),
        "images_shown": read_state(earlier[-1])["images_shown"],
        "heldout_energy": {"mean": float(values.mean()), "std": float(values.std())},
        "samples_energy": {"mean": float(on_samples.mean()), "std": float(on_samples.std())},
    }


def latent_recovery_line(rec: dict) -> str:
    return (
        f"  (R^2; per dimension min {rec['r2_per_dim_min']:.3g}, median "
        f"{rec['r2_per_dim_median']:.3g}; from the codes' Gaussian fit "
        f"{rec['r2_code_fit']:.3g})"
    )


def recon_fit_line(rec: dict) -> str:
    return (
        f"  (MSE of codes fitted per image, {rec['images']} images; from the inference "
        f"model's codes {rec['inferred']:.4g}, the latent-sized PCA's "
        f"{rec['pca_baseline']:.4g}; the fitted codes moved "
        f"{rec['codes_moved']:.3g} from codes of length {rec['codes_norm']:.3g})"
    )


def energy_auroc_line(rec: dict) -> str:
    held = rec["heldout"]["energy"]
    parts = [
        f"held-out energy {held['mean']:.4g} ± {held['std']:.3g}",
        f"samples {rec['samples']['energy']['mean']:.4g}",
    ]
    for set_name, s in rec["sets"].items():
        parts.append(
            f"{set_name}: energy {s['energy']['mean']:.4g}, AUROC by energy "
            f"{s['auroc_energy']:.3f} / KL {s['auroc_kl']:.3f} / recon {s['auroc_recon']:.3f}"
            + (f" / PPCA {s['auroc_ppca']:.3f}" if "auroc_ppca" in s else "")
        )
    prev = rec.get("previous_snapshot")
    if prev:
        parts.append(
            f"held-out energy at {prev['images_shown']} images "
            f"{prev['heldout_energy']['mean']:.4g}, a shift of "
            f"{prev['shift_in_std']:.2f} standard deviations; its midpoint to the samples "
            f"moved {prev['offset_shift_in_std']:.2f}, their gap {prev['gap']:.4g} -> "
            f"{rec['gap']:.4g}"
        )
    return "  (" + "; ".join(parts) + ")"




def initial_generator(run: LoadedRun) -> torch.nn.Module:
    """The generator exactly as training started it: a PCA path's from the run's first
    snapshot while it is kept (its fit needs the training data, which may have moved)."""
    first = snapshot_dir(run.run_dir, 0)
    if run.config.networks.pca_path and (first / "generator.safetensors").exists():
        cfg = run.config
        built = build_networks(cfg.networks, cfg.schedule.max_res, cfg.optim.half_lives())
        networks = {"generator": built["generator"]}
        load_weights(first, networks)
    else:
        networks = starting_networks(run.config)
    return networks["generator"].eval().requires_grad_(False)
