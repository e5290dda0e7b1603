"""The layers and helpers the progressive networks are built from.

Progressive-GAN's building blocks: equalized learning rate (weights scaled at run time by
gain / sqrt(fan_in)), pixel norm, leaky ReLU 0.2, nearest upsampling, 2x2 average-pool
downsampling, `channels(res)` feature maps, the fade-in blend and minibatch stddev; and
`PrincipalPath`, the fixed linear model the generator and inference model may start from.
"""

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LRELU_SLOPE = 0.2


def channels(res: int, fmap_base: int = 16384, fmap_max: int = 512, fmap_min: int = 16) -> int:
    """Feature maps at resolution `res`: fmap_base // res, clamped to [fmap_min, fmap_max]."""
    return max(min(fmap_base // res, fmap_max), fmap_min)


def num_parameters(module: nn.Module) -> int:
    """Number of scalar parameters in `module`."""
    return sum(p.numel() for p in module.parameters())


def pixel_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Normalise each pixel's feature vector to unit mean square over channels (dim 1)."""
    # The mean square is taken in fp32: in bf16 it loses too much for wide layers.
    ms = x.float().square().mean(dim=1, keepdim=True)
    return x * torch.rsqrt(ms + eps).to(x.dtype)


def lrelu(x: Tensor) -> Tensor:
    # In place is safe: every caller feeds a fresh conv/linear output, which its own backward
    # does not need, and leaky ReLU's backward can use its output.
    return F.leaky_relu(x, LRELU_SLOPE, inplace=True)


def upsample2x(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def downsample2x(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 2)


def fade(old: Tensor, new: Tensor, alpha: float) -> Tensor:
    """lerp(old, new, alpha), written out so mixed dtypes under autocast are fine."""
    return old + (new - old) * alpha


def fade_real(x: Tensor, alpha: float) -> Tensor:
    """Real images blended like generated ones during fade-in: lerp(up(down(x)), x, alpha), so
    the energy and inference models see real and generated images of one kind."""
    if alpha >= 1.0:
        return x
    return fade(upsample2x(downsample2x(x)), x, alpha)


class EqualizedConv2d(nn.Module):
    """Conv with weights ~ N(0, 1) scaled at runtime by gain / sqrt(fan_in) ("same" padding)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.scale = gain / math.sqrt(in_ch * kernel * kernel)
        self.padding = kernel // 2

    def forward(self, x: Tensor) -> Tensor:
        # Scaling the (small) weight rather than the activations keeps the cost negligible.
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqualizedLinear(nn.Module):
    """Linear layer with weights ~ N(0, 1) scaled at runtime by gain / sqrt(fan_in)."""

    def __init__(self, in_features: int, out_features: int, gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


def fp32(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off (the meta device, used to count costs, has no autocast)."""
    if device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)


class PrincipalPath(nn.Module):
    """A fixed linear Gaussian model under a network: the training images' top principal
    components at `res` (buffers, set by `progressive.train.pca_path.install`, never trained).

    The generator adds `image(z)`, the images' mean plus the components weighted by z times
    their standard deviations, so z ~ N(0, I) draws from the components' Gaussian; the
    inference model adds `code(x)`, the exact inverse on those components, and `logvar`, the
    probabilistic PCA's posterior variances. The networks then start from the best linear
    code of the latent's size and learn what it misses. Until installed it adds nothing.
    """

    def __init__(self, res: int, latent: int):
        super().__init__()
        self.res = res
        d = 3 * res * res
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("basis", torch.zeros(latent, d))  # orthonormal rows
        self.register_buffer("scale", torch.ones(latent))  # standard deviation along each
        self.register_buffer("logvar", torch.zeros(latent))

    def image(self, z: Tensor, res: int) -> Tensor:
        """(N, latent) -> (N, 3, res, res): the linear model's image, resized to `res`."""
        with fp32(z.device):  # pixel values need more than bf16's 8 bits
            x = torch.addmm(self.mean, z.float() * self.scale, self.basis)
        x = x.view(-1, 3, self.res, self.res)
        if res < self.res:
            return F.avg_pool2d(x, self.res // res)
        if res > self.res:
            return F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)
        return x

    def code(self, x: Tensor) -> Tensor:
        """(N, 3, r, r) -> (N, latent): the image's whitened coordinates on the components,
        after resizing it to the path's resolution (nearest up, average-pooled down)."""
        r = x.shape[-1]
        if r < self.res:
            x = F.interpolate(x, scale_factor=self.res // r, mode="nearest")
        elif r > self.res:
            x = F.avg_pool2d(x, r // self.res)
        with fp32(x.device):
            return ((x.float().flatten(1) - self.mean) @ self.basis.T) / self.scale


def minibatch_stddev(h: Tensor, group: int) -> Tensor:
    """Append one channel: the mean over features of the stddev across each group of images."""
    n, _, height, width = h.shape
    g = min(group, n)
    if n % g:
        raise ValueError(f"batch size {n} is not a multiple of the minibatch-stddev group {g}")
    y = h.float().reshape(g, -1, *h.shape[1:])
    std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (n // g,)
    std = std.to(h.dtype).repeat(g)[:, None, None, None].expand(n, 1, height, width)
    return torch.cat([h, std], dim=1)


def soft_clamp(x: Tensor, lo: float, hi: float) -> Tensor:
    """Smoothly keep x within (lo, hi): about x well inside, never a zero gradient."""
    return hi - F.softplus(hi - (lo + F.softplus(x - lo)))
