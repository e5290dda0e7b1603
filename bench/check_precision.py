"""Are gradients unscaled exactly once under fp16? One real training step under fp16 (with
accelerate's GradScaler) against the same step in fp32, from the same weights and images.

    python bench/check_precision.py                 # the GPU if there is one, else the CPU
    python bench/check_precision.py --device cpu --res 16

Adam's first moment after one step is (1 - beta1) times the gradient it was given, so each
network's moments under fp16 must have the fp32 moments' size: a gradient left scaled is
`scale` times too large, one unscaled twice `scale` times too small. Checked per network (the
generator and inference model share one backward, the energy model has its own), with bf16
autocast as a control. A step the scaler skips for overflow leaves no moments, so the scaler
starts at 256 and, while a network's step is skipped, at a quarter of that, down to 4 (the
lowest scale at which a second unscale still shows outside the bounds). accelerate gives the
CPU no GradScaler; there the check hands it one, so the same fp16 path runs. Exits 1 on a FAIL.
"""

from __future__ import annotations

import argparse
import sys

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, GradScalerKwargs
from accelerate.state import AcceleratorState

from progressive.config.presets import make_config
from progressive.config.schedule import Phase
from progressive.train.trainer import Trainer

INIT_SCALES = (256.0, 64.0, 16.0, 8.0, 4.0)  # tried in turn while a step overflows
BOUNDS = (0.5, 2.0)  # fp16 / fp32 moment size: same scale, fp16's rounding allowed


def moments(cfg: dict, precision: str, device: str, real: torch.Tensor, init_scale: float) -> dict:
    """Per network, the norm of Adam's first moments after one step; the scale used."""
    AcceleratorState._reset_state(reset_partial_state=True)
    acc = Accelerator(
        mixed_precision=precision, cpu=device == "cpu",
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True),
                         GradScalerKwargs(init_scale=init_scale)],
    )
    if precision == "fp16" and acc.scaler is None:  # the CPU: accelerate's fp16 path, by hand
        acc.native_amp = True
        acc.scaler = torch.amp.GradScaler(acc.device.type, init_scale=init_scale)
    trainer = Trainer.create(cfg, acc)
    res, batch = real.shape[-1], real.shape[0]
    lr = {n: table[res] for n, table in cfg.optim.lr_tables().items()}
    trainer.step(real, Phase(0, res, 1.0, False, batch, lr, 0, None), 0)
    out = {}
    for name, opt in trainer.optimizers.items():
        state = [s["exp_avg"].float() for s in opt.optimizer.state.values() if "exp_avg" in s]
        out[name] = torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(m) for m in state])).item() if state else None
    return {"moments": out, "scale": acc.scaler.get_scale() if acc.scaler else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"],
                    default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--res", type=int, default=None, help="default: 64 on a GPU, 16 on the CPU")
    args = ap.parse_args()
    res = args.res or (64 if args.device == "cuda" else 16)
    cfg = make_config(None, {"schedule.max_res": res, "schedule.start_res": res,
                             "data.workers": 0}, device=args.device)
    gen = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (cfg.schedule.batch[res], 3, res, res), dtype=torch.uint8,
                         generator=gen)
    print(f"one step at {res} px, batch {cfg.schedule.batch[res]}, {args.device}, sizing rule's "
          f"widths ({cfg.networks.fmap_base}/{cfg.networks.fmap_max}, "
          f"latent {cfg.networks.latent}); "
          "GradScaler from init scale 256")
    base = moments(cfg, "no", args.device, real, 1.0)["moments"]
    ok = True
    for precision in ("fp16", "bf16"):
        for init_scale in INIT_SCALES if precision == "fp16" else (1.0,):
            got = moments(cfg, precision, args.device, real, init_scale)
            if all(v is not None for v in got["moments"].values()):
                break
            print(f"     {precision} from scale {init_scale:g}: a step skipped for overflow")
        for name in ("generator", "inference", "energy"):
            if got["moments"][name] is None:
                ok = False
                print(f"FAIL {precision} {name}: no Adam moments (step skipped: overflow)")
                continue
            ratio = got["moments"][name] / base[name]
            good = BOUNDS[0] <= ratio <= BOUNDS[1]
            ok &= good
            print(f"{'PASS' if good else 'FAIL'} {precision} {name}: first moments "
                  f"{ratio:.4g}x fp32's (bounds {BOUNDS[0]}..{BOUNDS[1]})")
        if got["scale"] is not None:
            print(f"     {precision} scale: {init_scale:g} at the step, {got['scale']:g} after")
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
