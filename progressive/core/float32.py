"""How float32 matmuls and convolutions run on NVIDIA GPUs, set from a run's `tf32` setting
by training and by every command that loads a run, so their figures agree; and the
deterministic convolutions that training uses, so a resumed run repeats an uninterrupted one."""

from __future__ import annotations

import torch


def set_float32_math(tf32: bool) -> None:
    """Float32 matmuls and convolutions on NVIDIA GPUs: exact IEEE fp32, or TensorFloat-32
    (about 1e-3 relative error, several times faster on Ampere and later)."""
    mode = "tf32" if tf32 else "ieee"
    if hasattr(torch.backends, "fp32_precision"):  # torch >= 2.9 refuses mixing old and new
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
    else:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def float32_modes() -> tuple[str, str]:
    """The (matmul, convolution) float32 modes in force: "tf32" or "ieee"."""
    if hasattr(torch.backends, "fp32_precision"):
        return (
            "tf32" if torch.backends.cuda.matmul.fp32_precision == "tf32" else "ieee",
            "tf32" if torch.backends.cudnn.conv.fp32_precision == "tf32" else "ieee",
        )
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    return tuple("tf32" if f else "ieee" for f in flags)  # type: ignore[return-value]


def set_deterministic_convolutions() -> None:
    """cuDNN's deterministic convolution algorithms and no per-shape search (benchmark mode may
    pick another algorithm after a resume, and some of its picks are not deterministic)."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
