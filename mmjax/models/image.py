"""Image encoders: x [B, H, W, C] float in [0, 1] -> Features (tokens = spatial positions)."""

import dataclasses
import itertools

import jax
from einops import rearrange
from flax import nnx

from mmjax.models.layers import ConvBNReLU, Features, features_from_tokens, sinusoidal_positions
from mmjax.registry import ENCODERS


def _grid_features(x: jax.Array) -> Features:
    """Features from a feature map [B, H, W, D]: one token per position."""
    return features_from_tokens(rearrange(x, "b h w d -> b (h w) d"))


@ENCODERS.register("small_cnn")
class SmallCNN(nnx.Module):
    """A few conv-BN-ReLU blocks with 2x2 max-pooling; for small images (8x8 .. 32x32)."""

    modality = "image"

    @dataclasses.dataclass(frozen=True)
    class Config:
        in_channels: int = 1
        channels: tuple[int, ...] = (32, 64)
        dim: int = 64

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        widths = (cfg.in_channels, *cfg.channels)
        self.blocks = nnx.List(
            [ConvBNReLU(c_in, c_out, rngs=rngs) for c_in, c_out in itertools.pairwise(widths)]
        )
        self.proj = nnx.Linear(widths[-1], cfg.dim, rngs=rngs)
        self.dim = cfg.dim

    def __call__(self, x: jax.Array, *, train: bool) -> Features:
        for block in self.blocks:
            x = block(x, train=train)
            if min(x.shape[1:3]) >= 4:
                x = nnx.max_pool(x, (2, 2), (2, 2))
        return _grid_features(self.proj(x))


class BasicBlock(nnx.Module):
    """ResNet basic block: two 3x3 convs and an identity or 1x1-projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = ConvBNReLU(c_in, c_out, 3, stride, rngs=rngs)
        self.conv2 = ConvBNReLU(c_out, c_out, 3, 1, relu=False, rngs=rngs)
        self.shortcut = nnx.data(
            ConvBNReLU(c_in, c_out, 1, stride, relu=False, rngs=rngs)
            if stride != 1 or c_in != c_out
            else None
        )

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        y = self.conv2(self.conv1(x, train=train), train=train)
        skip = x if self.shortcut is None else self.shortcut(x, train=train)
        return nnx.relu(y + skip)


@ENCODERS.register("resnet18")
class ResNet18(nnx.Module):
    """ResNet-18 (He et al. 2016) in the torchvision layout; `stem="cifar"` for small images."""

    modality = "image"

    @dataclasses.dataclass(frozen=True)
    class Config:
        in_channels: int = 3
        width: int = 64
        stem: str = "imagenet"  # "imagenet": 7x7/2 conv + 3x3/2 max-pool; "cifar": 3x3/1 conv

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        if cfg.stem not in ("imagenet", "cifar"):
            from mmjax.errors import ConfigError

            raise ConfigError(f"resnet18.stem must be 'imagenet' or 'cifar', got {cfg.stem!r}")
        kernel, stride = (7, 2) if cfg.stem == "imagenet" else (3, 1)
        self.stem = ConvBNReLU(cfg.in_channels, cfg.width, kernel, stride, rngs=rngs)
        self.pool_stem = cfg.stem == "imagenet"
        widths = [cfg.width * m for m in (1, 2, 4, 8)]
        blocks = []
        c_in = cfg.width
        for stage, c_out in enumerate(widths):
            for i in range(2):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(c_in, c_out, stride, rngs=rngs))
                c_in = c_out
        self.blocks = nnx.List(blocks)
        self.dim = c_in

    def __call__(self, x: jax.Array, *, train: bool) -> Features:
        x = self.stem(x, train=train)
        if self.pool_stem:
            x = nnx.max_pool(x, (3, 3), (2, 2), padding="SAME")
        for block in self.blocks:
            x = block(x, train=train)
        return _grid_features(x)


@ENCODERS.register("image_patches")
class ImagePatches(nnx.Module):
    """Non-overlapping patches, linearly embedded, plus fixed position codes: early-fusion input."""

    modality = "image"

    @dataclasses.dataclass(frozen=True)
    class Config:
        in_channels: int = 1
        patch: int = 2
        dim: int = 64

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        p = cfg.patch
        self.embed = nnx.Conv(cfg.in_channels, cfg.dim, (p, p), (p, p), padding="VALID", rngs=rngs)
        self.dim = cfg.dim

    def __call__(self, x: jax.Array, *, train: bool) -> Features:
        tokens = rearrange(self.embed(x), "b h w d -> b (h w) d")
        return features_from_tokens(tokens + sinusoidal_positions(tokens.shape[1], self.dim))
