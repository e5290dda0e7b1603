"""The three progressive networks: generator, energy model and inference model.

Built from progressive-GAN's layers (`progressive.model.layers`), pixel norm in the generator.
Every network is built once at full size (all blocks and RGB adapters up to `max_res`), so the
parameter shapes never depend on the stage; the stage is chosen per call by `res` (generator)
or by the input size (energy, inference) and `alpha` (fade-in weight of the newest block).
"""

import copy
import math

import torch
from torch import Tensor, nn

from progressive.config.sections import Config, NetworksConfig
from progressive.core.resolutions import PCA_PATH_MAX_RES, check_resolution, resolutions
from progressive.model.layers import (
    EqualizedConv2d,
    EqualizedLinear,
    PrincipalPath,
    channels,
    downsample2x,
    fade,
    fp32,
    lrelu,
    minibatch_stddev,
    pixel_norm,
    soft_clamp,
    upsample2x,
)
from progressive.model.reference import ReferenceEnergy, ReferenceGenerator, ReferenceInference

LOGVAR_MIN, LOGVAR_MAX = -12.0, 8.0


class _GeneratorFirst(nn.Module):
    """Latent -> 4x4 features: dense, lrelu, pn, conv3x3, lrelu, pn."""

    def __init__(self, latent: int, ch: int, pn: bool):
        super().__init__()
        self.ch, self.pn = ch, pn
        self.dense = EqualizedLinear(latent, ch * 16, gain=math.sqrt(2) / 4)
        self.conv = EqualizedConv2d(ch, ch, 3)

    def forward(self, z: Tensor) -> Tensor:
        # channels_last from here on: oneDNN (CPU) and tensor-core (GPU) convs run faster in it.
        h = self.dense(z).view(-1, self.ch, 4, 4).contiguous(memory_format=torch.channels_last)
        h = lrelu(h)
        h = pixel_norm(h) if self.pn else h
        h = lrelu(self.conv(h))
        return pixel_norm(h) if self.pn else h


class _GeneratorBlock(nn.Module):
    """Upsample x2, then (conv3x3, lrelu, pn) twice."""

    def __init__(self, in_ch: int, out_ch: int, pn: bool):
        super().__init__()
        self.pn = pn
        self.conv0 = EqualizedConv2d(in_ch, out_ch, 3)
        self.conv1 = EqualizedConv2d(out_ch, out_ch, 3)

    def forward(self, h: Tensor) -> Tensor:
        h = lrelu(self.conv0(upsample2x(h)))
        h = pixel_norm(h) if self.pn else h
        h = lrelu(self.conv1(h))
        return pixel_norm(h) if self.pn else h


class Generator(nn.Module):
    """z (N, latent) -> image (N, 3, res, res) in about [-1, 1] (linear output, no tanh)."""

    def __init__(
        self,
        max_res: int,
        latent: int = 512,
        fmap_base: int = 16384,
        fmap_max: int = 512,
        pixel_norm: bool = True,
        fmap_min: int = 16,
        pca_path: bool = False,
    ):
        super().__init__()
        self.max_res, self.latent, self.pixel_norm = max_res, latent, pixel_norm
        self.pca = PrincipalPath(min(max_res, PCA_PATH_MAX_RES), latent) if pca_path else None
        ch = lambda r: channels(r, fmap_base, fmap_max, fmap_min)  # noqa: E731
        self.blocks = nn.ModuleDict()
        self.to_rgb = nn.ModuleDict()
        for r in resolutions(max_res):
            self.blocks[str(r)] = (
                _GeneratorFirst(latent, ch(4), pixel_norm)
                if r == 4
                else _GeneratorBlock(ch(r // 2), ch(r), pixel_norm)
            )
            self.to_rgb[str(r)] = EqualizedConv2d(ch(r), 3, 1, gain=1.0)

    def forward(self, z: Tensor, res: int, alpha: float = 1.0) -> Tensor:
        check_resolution(res, "resolution", self.max_res)
        x = self._convolutional(z, res, alpha)
        return x if self.pca is None else x + self.pca.image(z, res)  # fp32 where it is added

    def _convolutional(self, z: Tensor, res: int, alpha: float) -> Tensor:
        h = pixel_norm(z) if self.pixel_norm else z
        h = self.blocks["4"](h)
        r = 4
        while r < res // 2:
            r *= 2
            h = self.blocks[str(r)](h)
        if res == 4:
            return self.to_rgb["4"](h)
        new = self.to_rgb[str(res)](self.blocks[str(res)](h))
        if alpha >= 1.0:
            return new
        return fade(upsample2x(self.to_rgb[str(res // 2)](h)), new, alpha)


class _FromRGB(nn.Module):
    def __init__(self, out_ch: int):
        super().__init__()
        self.conv = EqualizedConv2d(3, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        return lrelu(self.conv(x))


class _EncoderBlock(nn.Module):
    """conv3x3, lrelu, conv3x3 (to the next lower resolution's width), lrelu, avgpool 2x."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv0 = EqualizedConv2d(in_ch, in_ch, 3)
        self.conv1 = EqualizedConv2d(in_ch, out_ch, 3)

    def forward(self, h: Tensor) -> Tensor:
        return downsample2x(lrelu(self.conv1(lrelu(self.conv0(h)))))


class _EncoderLast(nn.Module):
    """4x4 features -> [mbstd], conv3x3, lrelu, flatten, dense, lrelu, dense (gain 1)."""

    def __init__(self, ch: int, out_features: int, mbstd_group: int):
        super().__init__()
        self.mbstd_group = mbstd_group
        self.conv = EqualizedConv2d(ch + (1 if mbstd_group else 0), ch, 3)
        self.dense0 = EqualizedLinear(ch * 16, ch)
        self.dense1 = EqualizedLinear(ch, out_features, gain=1.0)

    def forward(self, h: Tensor) -> Tensor:
        if self.mbstd_group:
            h = minibatch_stddev(h, self.mbstd_group)
        h = lrelu(self.dense0(lrelu(self.conv(h)).flatten(1)))
        with fp32(h.device):  # energies near |E| = 50 need more than bf16's steps of 0.25
            return self.dense1(h.float())


class _Encoder(nn.Module):
    """Shared trunk of the energy and inference models: image (N, 3, r, r) -> (N, out_features)."""

    def __init__(
        self,
        max_res: int,
        out_features: int,
        fmap_base: int = 16384,
        fmap_max: int = 512,
        mbstd_group: int = 0,
        fmap_min: int = 16,
    ):
        super().__init__()
        self.max_res = max_res
        ch = lambda r: channels(r, fmap_base, fmap_max, fmap_min)  # noqa: E731
        self.blocks = nn.ModuleDict()
        self.from_rgb = nn.ModuleDict()
        for r in resolutions(max_res):
            self.from_rgb[str(r)] = _FromRGB(ch(r))
            self.blocks[str(r)] = (
                _EncoderLast(ch(4), out_features, mbstd_group)
                if r == 4
                else _EncoderBlock(ch(r), ch(r // 2))
            )

    def forward(self, x: Tensor, alpha: float = 1.0) -> Tensor:
        res = x.shape[-1]
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-2] != res:
            raise ValueError(f"expected images of shape (N, 3, res, res), got {tuple(x.shape)}")
        check_resolution(res, "resolution", self.max_res)
        x = x.contiguous(memory_format=torch.channels_last)
        h = self.blocks[str(res)](self.from_rgb[str(res)](x))
        if res > 4 and alpha < 1.0:
            h = fade(self.from_rgb[str(res // 2)](downsample2x(x)), h, alpha)
        r = res // 2
        while r >= 4:
            h = self.blocks[str(r)](h)
            r //= 2
        return h


class Energy(nn.Module):
    """Image (N, 3, res, res) -> energy (N,), fp32, raw (low energy = data-like)."""

    def __init__(
        self, max_res: int, fmap_base: int = 16384, fmap_max: int = 512, mbstd_group: int = 0,
        fmap_min: int = 16,
    ):
        super().__init__()
        self.max_res = max_res
        self.trunk = _Encoder(max_res, 1, fmap_base, fmap_max, mbstd_group, fmap_min)

    def forward(self, x: Tensor, alpha: float = 1.0) -> Tensor:
        return self.trunk(x, alpha)[:, 0].float()


class Inference(nn.Module):
    """Image (N, 3, res, res) -> (mu, logvar) of q(z|x), each (N, latent), fp32.

    logvar is soft-clamped to (-12, 8) so exp(logvar) and 1 / exp(logvar) stay finite.
    """

    def __init__(
        self, max_res: int, latent: int = 512, fmap_base: int = 16384, fmap_max: int = 512,
        fmap_min: int = 16, pca_path: bool = False,
    ):
        super().__init__()
        self.max_res, self.latent = max_res, latent
        self.trunk = _Encoder(
            max_res, 2 * latent, fmap_base, fmap_max, fmap_min=fmap_min
        )
        self.pca = PrincipalPath(min(max_res, PCA_PATH_MAX_RES), latent) if pca_path else None

    def forward(self, x: Tensor, alpha: float = 1.0) -> tuple[Tensor, Tensor]:
        mu, logvar = self.trunk(x, alpha).float().chunk(2, dim=1)
        if self.pca is not None:
            mu, logvar = mu + self.pca.code(x), logvar + self.pca.logvar
        return mu, soft_clamp(logvar, LOGVAR_MIN, LOGVAR_MAX)


# --------------------------------------------------------------------------- from a configuration


NETWORK_NAMES = ("generator", "generator_ema", "energy", "inference")
AVERAGE_OF = {  # average: its network
    "generator_ema": "generator", "energy_ema": "energy", "inference_ema": "inference"
}
OPTIONAL_AVERAGES = ("energy_ema", "inference_ema")


def network_names(half_lives: dict[str, float]) -> tuple[str, ...]:
    """The networks a run keeps (and its snapshots hold): the four always, and the energy or
    inference model's average where its half-life (`OptimConfig.half_lives`) asks for one."""
    return NETWORK_NAMES + tuple(n for n in OPTIONAL_AVERAGES if half_lives[AVERAGE_OF[n]])


def in_use(networks: dict[str, nn.Module], name: str, raw: bool = False) -> nn.Module:
    """The energy or inference model that evaluation and the use commands work with: its
    average where the run keeps one (unless `raw`), else the model itself."""
    return networks[name] if raw else networks.get(f"{name}_ema", networks[name])


def initial_networks(cfg: Config) -> dict[str, torch.nn.Module]:
    """The networks exactly as a run starts them: the global seed set from the configuration,
    then `build_networks`."""
    torch.manual_seed(cfg.run.seed)
    return build_networks(cfg.networks, cfg.schedule.max_res, cfg.optim.half_lives())


def build_networks(
    net: NetworksConfig, max_res: int, half_lives: dict[str, float]
) -> dict[str, torch.nn.Module]:
    """The three networks, the generator average and any other average `half_lives` keeps,
    at full size."""
    if net.architecture == "reference":
        networks = _reference_networks(max_res, net.latent)
    else:
        networks = _progressive_networks(net, max_res)
    for name in network_names(half_lives)[len(NETWORK_NAMES):]:  # copies: no draw, alike
        networks[name] = copy.deepcopy(networks[AVERAGE_OF[name]]).requires_grad_(False)
    return networks


def _progressive_networks(net: NetworksConfig, max_res: int) -> dict[str, nn.Module]:
    """The growing networks of this module."""
    widths = {"fmap_base": net.fmap_base, "fmap_max": net.fmap_max, "fmap_min": net.fmap_min}
    wide = net.energy_width
    energy_widths = {**widths, "fmap_base": net.fmap_base * wide, "fmap_max": net.fmap_max * wide}
    generator = Generator(max_res, net.latent, **widths, pca_path=net.pca_path)
    generator_ema = Generator(max_res, net.latent, **widths, pca_path=net.pca_path)
    generator_ema.load_state_dict(generator.state_dict())
    generator_ema.requires_grad_(False)
    energy = Energy(max_res, mbstd_group=net.mbstd_group, **energy_widths)
    return {
        "generator": generator,
        "generator_ema": generator_ema,
        "energy": energy,
        "inference": Inference(max_res, net.latent, **widths, pca_path=net.pca_path),
    }


def _reference_networks(res: int, latent: int) -> dict[str, nn.Module]:
    """The DCGAN-sized networks of `reference_networks` (fixed resolution, no growing)."""
    generator = ReferenceGenerator(res, latent)
    generator_ema = ReferenceGenerator(res, latent)
    generator_ema.load_state_dict(generator.state_dict())
    generator_ema.requires_grad_(False).eval()
    return {
        "generator": generator,
        "generator_ema": generator_ema,
        "energy": ReferenceEnergy(res),
        "inference": ReferenceInference(res, latent),
    }
