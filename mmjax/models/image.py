"""Image encoders: x [B, H, W, C] float in [0, 1] -> Features (tokens = spatial positions).

CNNs give one token per position of their last feature map; ViTs give the class token followed
by the patch tokens. The ImageNet-sized networks (VGG, ResNet, EfficientNet-Lite, ViT) keep their
real sizes as defaults; at the contract tests' 32x32 input the CNNs' last stages run on 2x2 or
1x1 maps, which XLA:CPU handles slowly (docs/architecture.md: Traps).
"""

import dataclasses
import itertools
from typing import ClassVar

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from mmjax.errors import ConfigError
from mmjax.models.batch_norm import batch_norm
from mmjax.models.layers import (
    ConvBNReLU,
    Features,
    TransformerBlock,
    features_from_tokens,
    same_conv,
    sinusoidal_positions,
)
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
        for block in self.blocks:  # stride-1 convs: the map keeps its size until pooled
            if min(x.shape[1:3]) >= 4:
                x = block.pooled(x, 2, 2, train=train)
            else:
                x = block(x, train=train)
        return _grid_features(self.proj(x))


# VGG ----------------------------------------------------------------------------------------

# convs per stage, for the five stages of widths width * (1, 2, 4, 8, 8)
_VGG_PLANS: dict[int, tuple[int, ...]] = {11: (1, 1, 2, 2, 2), 16: (2, 2, 3, 3, 3)}


class VGG(nnx.Module):
    """VGG with BatchNorm (Simonyan & Zisserman 2015), torchvision's `_bn` features, no FC layers.

    Five stages of 3x3 conv-BN-ReLU layers, each followed by a 2x2 max-pool (skipped once the map
    is down to 1 pixel, so small inputs work). Tokens are the last map's positions: 7x7 at 224x224,
    1x1 at 32x32, where the last stage's 3x3 convs run on a 2x2 map (slow on XLA:CPU). The convs
    have no bias: torchvision's conv bias sits right before BatchNorm, so an importer folds it into
    the running mean. Subclasses set `depth`, a key of `_VGG_PLANS`.
    """

    modality = "image"
    depth: ClassVar[int]

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        stages = []
        c_in = cfg.in_channels
        for convs, mult in zip(_VGG_PLANS[self.depth], (1, 2, 4, 8, 8), strict=True):
            c_out = cfg.width * mult
            layers = []
            for _ in range(convs):
                layers.append(ConvBNReLU(c_in, c_out, 3, 1, rngs=rngs))
                c_in = c_out
            stages.append(nnx.List(layers))
        self.stages = nnx.List(stages)
        self.dim = c_in

    def __call__(self, x: jax.Array, *, train: bool) -> Features:
        for stage in self.stages:  # stride-1 convs: the map keeps its size until pooled
            *layers, last = stage
            for layer in layers:
                x = layer(x, train=train)
            if min(x.shape[1:3]) >= 2:
                x = last.pooled(x, 2, 2, train=train)
            else:
                x = last(x, train=train)
        return _grid_features(x)


@ENCODERS.register("vgg11")
class VGG11(VGG):
    """VGG-11 with BatchNorm (Simonyan & Zisserman 2015), conv features only."""

    depth = 11

    @dataclasses.dataclass(frozen=True)
    class Config:
        in_channels: int = 3
        width: int = 64  # first stage's channels; 64 is the real network


@ENCODERS.register("vgg16")
class VGG16(VGG):
    """VGG-16 with BatchNorm (Simonyan & Zisserman 2015), conv features only."""

    depth = 16

    @dataclasses.dataclass(frozen=True)
    class Config:
        in_channels: int = 3
        width: int = 64  # first stage's channels; 64 is the real network


# ResNet -------------------------------------------------------------------------------------


class BasicBlock(nnx.Module):
    """ResNet basic block: two 3x3 convs and an identity or 1x1-projection shortcut."""

    expansion: ClassVar[int] = 1

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


class Bottleneck(nnx.Module):
    """ResNet bottleneck block (torchvision's v1.5: stride on the 3x3 conv): 1x1 -> 3x3 -> 1x1.

    `planes` is the inner width; the block outputs `planes * 4` channels.
    """

    expansion: ClassVar[int] = 4

    def __init__(self, c_in: int, planes: int, stride: int, *, rngs: nnx.Rngs):
        c_out = planes * self.expansion
        self.conv1 = ConvBNReLU(c_in, planes, 1, 1, rngs=rngs)
        self.conv2 = ConvBNReLU(planes, planes, 3, stride, rngs=rngs)
        self.conv3 = ConvBNReLU(planes, c_out, 1, 1, relu=False, rngs=rngs)
        self.shortcut = nnx.data(
            ConvBNReLU(c_in, c_out, 1, stride, relu=False, rngs=rngs)
            if stride != 1 or c_in != c_out
            else None
        )

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        y = self.conv3(self.conv2(self.conv1(x, train=train), train=train), train=train)
        skip = x if self.shortcut is None else self.shortcut(x, train=train)
        return nnx.relu(y + skip)


# depth -> (block, blocks per stage); the stages have widths width * (1, 2, 4, 8) * expansion
_RESNET_PLANS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(nnx.Module):
    """ResNet (He et al. 2016) in the torchvision layout, without the fc layer.

    `stem="imagenet"`: 7x7/2 conv + 3x3/2 max-pool; `stem="cifar"`: one 3x3/1 conv, for small
    images (with the ImageNet stem a 32x32 input leaves 2x2 maps in the third stage and 1x1 in the
    fourth, which XLA:CPU handles slowly). Subclasses set `depth`, a key of `_RESNET_PLANS`.
    """

    modality = "image"
    depth: ClassVar[int]

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        if cfg.stem not in ("imagenet", "cifar"):
            raise ConfigError(
                f"resnet{self.depth}.stem must be 'imagenet' or 'cifar', got {cfg.stem!r}"
            )
        kernel, stride = (7, 2) if cfg.stem == "imagenet" else (3, 1)
        self.stem = ConvBNReLU(cfg.in_channels, cfg.width, kernel, stride, rngs=rngs)
        self.pool_stem = cfg.stem == "imagenet"
        block, counts = _RESNET_PLANS[self.depth]
        blocks = []
        c_in = cfg.width
        for stage, count in enumerate(counts):
            planes = cfg.width * 2**stage
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(block(c_in, planes, stride, rngs=rngs))
                c_in = planes * block.expansion
        self.blocks = nnx.List(blocks)
        self.dim = c_in

    def __call__(self, x: jax.Array, *, train: bool) -> Features:
        if self.pool_stem:
            x = self.stem.pooled(x, 3, 2, train=train, padding="SAME")
        else:
            x = self.stem(x, train=train)
        for block in self.blocks:
            x = block(x, train=train)
        return _grid_features(x)


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """The fields every ResNet depth shares."""

    in_channels: int = 3
    width: int = 64
    stem: str = "imagenet"  # "imagenet": 7x7/2 conv + 3x3/2 max-pool; "cifar": 3x3/1 conv


@ENCODERS.register("resnet18")
class ResNet18(ResNet):
    """ResNet-18 (He et al. 2016) in the torchvision layout; `stem="cifar"` for small images."""

    depth = 18

    @dataclasses.dataclass(frozen=True)
    class Config(ResNetConfig):
        pass


@ENCODERS.register("resnet34")
class ResNet34(ResNet):
    """ResNet-34 (He et al. 2016) in the torchvision layout; `stem="cifar"` for small images."""

    depth = 34

    @dataclasses.dataclass(frozen=True)
    class Config(ResNetConfig):
        pass


@ENCODERS.register("resnet50")
class ResNet50(ResNet):
    """ResNet-50 (He et al. 2016), bottleneck blocks, torchvision layout; `stem="cifar"` option."""

    depth = 50

    @dataclasses.dataclass(frozen=True)
    class Config(ResNetConfig):
        pass


# EfficientNet-Lite ---------------------------------------------------------------------------


class TFConvBN(nnx.Module):
    """Conv (no bias) -> BatchNorm -> optional ReLU6, with TensorFlow's conventions.

    Padding is "SAME", which in XLA (and so in `nnx.Conv`) is TensorFlow's definition: output size
    ceil(in / stride), and an odd total padding puts the extra row/column at the bottom/right.
    For stride 2 that is asymmetric, unlike PyTorch's `padding=k // 2`; tests/test_image_encoders
    checks it against an explicit `jnp.pad` + "VALID" conv. BatchNorm uses TF's eps 1e-3 and
    momentum 0.99. `groups=c_in` makes a depthwise conv.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int = 1,
        stride: int = 1,
        *,
        groups: int = 1,
        act: bool = True,
        rngs: nnx.Rngs,
    ):
        self.conv = nnx.Conv(
            c_in,
            c_out,
            (kernel, kernel),
            (stride, stride),
            padding="SAME",
            feature_group_count=groups,
            use_bias=False,
            rngs=rngs,
        )
        self.norm = nnx.BatchNorm(c_out, momentum=0.99, epsilon=1e-3, rngs=rngs)
        self.act = act

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = batch_norm(self.norm, same_conv(self.conv, x), train=train)
        return jax.nn.relu6(x) if self.act else x


class MBConv(nnx.Module):
    """Inverted-residual block without squeeze-excitation (EfficientNet-Lite, MobileNetV2).

    expand (1x1, absent when the ratio is 1) -> depthwise kxk/stride -> project (1x1, linear),
    with an identity skip when the stride is 1 and the widths match.
    """

    def __init__(
        self, c_in: int, c_out: int, expand: int, kernel: int, stride: int, *, rngs: nnx.Rngs
    ):
        hidden = c_in * expand
        self.expand = nnx.data(TFConvBN(c_in, hidden, rngs=rngs) if expand != 1 else None)
        self.depthwise = TFConvBN(hidden, hidden, kernel, stride, groups=hidden, rngs=rngs)
        self.project = TFConvBN(hidden, c_out, act=False, rngs=rngs)
        self.residual = stride == 1 and c_in == c_out

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        y = x if self.expand is None else self.expand(x, train=train)
        y = self.project(self.depthwise(y, train=train), train=train)
        return x + y if self.residual else y


# EfficientNet-B0's stages: (expand ratio, kernel, stride, repeats, channels)
_EFFICIENTNET_B0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (6, 3, 2, 2, 24),
    (6, 5, 2, 2, 40),
    (6, 3, 2, 3, 80),
    (6, 5, 1, 3, 112),
    (6, 5, 2, 4, 192),
    (6, 3, 1, 1, 320),
)


@ENCODERS.register("efficientnet_lite0")
class EfficientNetLite0(nnx.Module):
    """EfficientNet-Lite0 (Tan & Le 2019, Lite variant): B0's blocks, no SE, ReLU6, no classifier.

    Stem 3x3/2 conv to 32 channels, the 16 MBConv blocks of B0, head 1x1 conv to 1280 channels;
    tokens are the head's map positions (7x7 at 224x224, 1x1 at 32x32). Parameters are named for
    the PyTorch checkpoint's layout: `stem`, `blocks[i].expand/.depthwise/.project`, `head`, each a
    `conv` + `norm` pair. The pretrained weights expect `(255 x - 127) / 128` of [0, 1] pixels;
    `imagenet_input=True` (the default, pinned by the `efficientnet-lite0` catalog entry)
    applies it, so the default Config (which a video encoder's frames get) fits the weights.
    `input_size` > 0 resizes every image [B, H, W, C] to that square side (bilinear, antialiased
    when shrinking) before the stem, so small images meet the ImageNet weights at the 224x224
    they were trained at.
    """

    modality = "image"

    @dataclasses.dataclass(frozen=True)
    class Config:
        in_channels: int = 3
        imagenet_input: bool = True  # map [0, 1] inputs to the (255 x - 127) / 128 of ImageNet
        input_size: int = 0  # > 0: resize inputs to input_size x input_size first

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        if cfg.input_size < 0:
            raise ConfigError(f"efficientnet_lite0.input_size must be >= 0, got {cfg.input_size}")
        self.input_size = cfg.input_size
        self.imagenet_input = cfg.imagenet_input
        self.stem = TFConvBN(cfg.in_channels, 32, 3, 2, rngs=rngs)
        blocks = []
        c_in = 32
        for expand, kernel, stride, repeats, c_out in _EFFICIENTNET_B0_STAGES:
            for i in range(repeats):
                s = stride if i == 0 else 1
                blocks.append(MBConv(c_in, c_out, expand, kernel, s, rngs=rngs))
                c_in = c_out
        self.blocks = nnx.List(blocks)
        self.head = TFConvBN(c_in, 1280, rngs=rngs)
        self.dim = 1280

    def __call__(self, x: jax.Array, *, train: bool) -> Features:
        """x [B, H, W, C] in [0, 1] -> Features (tokens [B, h * w, 1280])."""
        if self.input_size and x.shape[1:3] != (self.input_size, self.input_size):
            shape = (x.shape[0], self.input_size, self.input_size, x.shape[3])
            x = jax.image.resize(x, shape, "bilinear")
        if self.imagenet_input:
            x = (255.0 * x - 127.0) / 128.0
        x = self.stem(x, train=train)
        for block in self.blocks:
            x = block(x, train=train)
        return _grid_features(self.head(x, train=train))


# ViT ----------------------------------------------------------------------------------------

# size -> (width, depth, heads)
_VIT_SIZES: dict[str, tuple[int, int, int]] = {"ti": (192, 12, 3), "s": (384, 12, 6)}


class ViT(nnx.Module):
    """Vision Transformer (Dosovitskiy et al. 2021): patch embedding, class token, positions.

    Pre-norm transformer blocks and a final LayerNorm; tokens are [class, patches...] and pooled is
    the class token. The position embeddings are learned for an `image_size // patch` square grid;
    another input size resamples their grid bilinearly to the input's patch grid (a 32x32 input
    with patch 16 uses a 2x2 grid). Subclasses set `size`, a key of `_VIT_SIZES`.
    """

    modality = "image"
    size: ClassVar[str]

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        dim, depth, heads = _VIT_SIZES[self.size]
        if cfg.image_size % cfg.patch:
            raise ConfigError(
                f"vit_{self.size}.image_size ({cfg.image_size}) must be a multiple of "
                f"vit_{self.size}.patch ({cfg.patch})"
            )
        p = cfg.patch
        self.patch_embed = nnx.Conv(
            cfg.in_channels, dim, (p, p), (p, p), padding="VALID", rngs=rngs
        )
        self.grid = cfg.image_size // p
        self.cls_token = nnx.Param(jnp.zeros((1, 1, dim)))
        self.pos_embed = nnx.Param(
            nnx.initializers.normal(0.02)(rngs.params(), (1, 1 + self.grid**2, dim))
        )
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.blocks = nnx.List(
            [TransformerBlock(dim, heads, dropout=cfg.dropout, rngs=rngs) for _ in range(depth)]
        )
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.dim = dim

    def positions(self, h: int, w: int) -> jax.Array:
        """Position embeddings [1, 1 + h * w, D] for an h x w patch grid."""
        pos = self.pos_embed[...]
        if (h, w) == (self.grid, self.grid):
            return pos
        grid = pos[0, 1:].reshape(self.grid, self.grid, self.dim)
        grid = jax.image.resize(grid, (h, w, self.dim), "bilinear")
        return jnp.concatenate([pos[:, :1], grid.reshape(1, h * w, self.dim)], axis=1)

    def __call__(self, x: jax.Array, *, train: bool) -> Features:
        x = self.patch_embed(x)
        b, h, w, d = x.shape
        cls = jnp.broadcast_to(self.cls_token[...], (b, 1, d))
        tokens = jnp.concatenate([cls, x.reshape(b, h * w, d)], axis=1) + self.positions(h, w)
        tokens = self.dropout(tokens, deterministic=not train)
        mask = jnp.ones(tokens.shape[:2], dtype=bool)
        for block in self.blocks:
            tokens = block(tokens, mask, train=train)
        tokens = self.norm(tokens)
        return Features(tokens, mask, tokens[:, 0])


@ENCODERS.register("vit_ti")
class ViTTiny(ViT):
    """ViT-Ti/16 (Dosovitskiy et al. 2021; DeiT-Ti size): width 192, depth 12, 3 heads."""

    size = "ti"

    @dataclasses.dataclass(frozen=True)
    class Config:
        in_channels: int = 3
        image_size: int = 224  # sets the learned position grid (image_size // patch)^2
        patch: int = 16
        dropout: float = 0.0


@ENCODERS.register("vit_s")
class ViTSmall(ViT):
    """ViT-S/16 (Dosovitskiy et al. 2021; DeiT-S size): width 384, depth 12, 6 heads."""

    size = "s"

    @dataclasses.dataclass(frozen=True)
    class Config:
        in_channels: int = 3
        image_size: int = 224  # sets the learned position grid (image_size // patch)^2
        patch: int = 16
        dropout: float = 0.0


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
