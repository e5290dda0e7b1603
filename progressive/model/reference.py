"""DCGAN-sized networks at one fixed resolution, sized like the paper's CIFAR-10 models.

The divergence-triangle paper trained 32x32 models with DCGAN-style networks: a generator of
transposed 4x4 convolutions with batch norm halving the channels as the resolution doubles
(512 at 4x4 down to 64 at 32x32, tanh output), and energy and inference models of strided 4x4
convolutions doubling the channels (64 at 32x32 up to 512 at 4x4), leaky ReLU 0.2. They are
built here from those facts with the same call signatures as the progressive networks
(`generator(z, res, alpha)`, `energy(x, alpha)`, `inference(x, alpha)`), so the loop, the
checkpoints and every command work unchanged; `res` must be the one resolution and `alpha` is
ignored (there is no growing).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

LOGVAR_MIN, LOGVAR_MAX = -12.0, 8.0  # as the progressive inference model's


def _check(res: int, fixed: int) -> None:
    if res != fixed:
        raise ValueError(f"the reference networks work at {fixed}px only, got {res}px")


def _widths(res: int, base: int) -> list[int]:
    """Channels from 4x4 up to `res`: base*8 at 4x4, halving per doubling, at least base."""
    out, r, ch = [], 4, base * 8
    while r <= res:
        out.append(max(ch, base))
        r, ch = r * 2, ch // 2
    return out


class ReferenceGenerator(nn.Module):
    """z (N, latent) -> image (N, 3, res, res) in [-1, 1]: 4x4 dense start, then transposed
    4x4 stride-2 convolutions with batch norm and ReLU, a 3x3 conv to RGB and tanh."""

    def __init__(self, max_res: int = 32, latent: int = 100, base: int = 64):
        super().__init__()
        self.max_res, self.latent = max_res, latent
        ch = _widths(max_res, base)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent, ch[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(ch[0]),
            nn.ReLU(inplace=True),
        ]
        for c_in, c_out in zip(ch[:-1], ch[1:], strict=True):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.Conv2d(ch[-1], 3, 3, 1, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, res: int, alpha: float = 1.0) -> Tensor:
        _check(res, self.max_res)
        return self.net(z[:, :, None, None])


class _ReferenceEncoder(nn.Module):
    """Image (N, 3, res, res) -> (N, out_features): a 3x3 conv, then strided 4x4 convolutions
    doubling the channels down to 4x4, leaky ReLU 0.2, and a 4x4 valid conv to the output."""

    def __init__(self, max_res: int, out_features: int, base: int = 64):
        super().__init__()
        self.max_res = max_res
        ch = list(reversed(_widths(max_res, base)))  # widest at 4x4
        layers: list[nn.Module] = [nn.Conv2d(3, ch[0], 3, 1, 1), nn.LeakyReLU(0.2, inplace=True)]
        for c_in, c_out in zip(ch[:-1], ch[1:], strict=True):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(ch[-1], out_features, 4, 1, 0))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, alpha: float = 1.0) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"expected images of shape (N, 3, res, res), got {tuple(x.shape)}")
        _check(x.shape[-1], self.max_res)
        return self.net(x).flatten(1)


class ReferenceEnergy(nn.Module):
    """Image -> energy (N,), fp32, raw (low energy = data-like)."""

    def __init__(self, max_res: int = 32, base: int = 64):
        super().__init__()
        self.max_res = max_res
        self.trunk = _ReferenceEncoder(max_res, 1, base)

    def forward(self, x: Tensor, alpha: float = 1.0) -> Tensor:
        return self.trunk(x)[:, 0].float()


class ReferenceInference(nn.Module):
    """Image -> (mu, logvar) of q(z|x), each (N, latent), logvar soft-clamped like Inference."""

    def __init__(self, max_res: int = 32, latent: int = 100, base: int = 64):
        super().__init__()
        self.max_res, self.latent = max_res, latent
        self.trunk = _ReferenceEncoder(max_res, 2 * latent, base)

    def forward(self, x: Tensor, alpha: float = 1.0) -> tuple[Tensor, Tensor]:
        mu, logvar = self.trunk(x).float().chunk(2, dim=1)
        # Smoothly within (LOGVAR_MIN, LOGVAR_MAX), never a zero gradient, like Inference.
        lo, hi = LOGVAR_MIN, LOGVAR_MAX
        logvar = hi - F.softplus(hi - (lo + F.softplus(logvar - lo)))
        return mu, logvar
