"""The ImageNet-sized image encoders: sizes against the papers' figures, padding, position grids.

Sizes and shapes come from `nnx.eval_shape`, so the real networks are traced, never allocated.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax.models.image import TFConvBN
from mmjax.registry import ENCODERS

# Parameters without the classifier: torchvision (ResNets, VGG-16_bn features), the
# efficientnet_lite0 checkpoint (4.65M minus its 1280x1000 fc), timm (ViT-Ti/S minus the head).
KNOWN_PARAMS = {
    "resnet18": 11.18e6,
    "resnet34": 21.28e6,
    "resnet50": 23.51e6,
    "vgg16": 14.72e6,  # torchvision's conv biases (4,224) are folded into BatchNorm here
    "efficientnet_lite0": 3.37e6,
    "vit_ti": 5.52e6,
    "vit_s": 21.67e6,
}


def _abstract(name: str, **fields):
    cls = ENCODERS.get(name)
    return cls, nnx.eval_shape(lambda: cls(cls.Config(**fields), rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("name", sorted(KNOWN_PARAMS))
def test_parameter_count(name):
    _, model = _abstract(name)
    count = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count == pytest.approx(KNOWN_PARAMS[name], rel=0.01)


@pytest.mark.parametrize(
    ("name", "tokens", "dim"),
    [
        ("vgg11", 49, 512),
        ("vgg16", 49, 512),
        ("resnet34", 49, 512),
        ("resnet50", 49, 2048),
        ("efficientnet_lite0", 49, 1280),
        ("vit_s", 1 + 14 * 14, 384),
    ],
)
def test_imagenet_input_shapes(name, tokens, dim):
    """At 224x224 the CNNs end on a 7x7 map and ViT/16 has 196 patches plus the class token."""
    cls = ENCODERS.get(name)

    def forward():
        model = cls(cls.Config(), rngs=nnx.Rngs(0))
        return model(jnp.zeros((1, 224, 224, 3)), train=False)

    out = nnx.eval_shape(forward)
    assert out.tokens.shape == (1, tokens, dim)
    assert out.pooled.shape == (1, dim)


def test_efficientnet_resizes_small_images_to_its_input_size():
    """input_size: a 32x32 emoji is resized before the stem (to 64x64 here: a 2x2 map); the
    same image resized outside the model gives the same features."""
    cls = ENCODERS.get("efficientnet_lite0")
    model = cls(cls.Config(input_size=64), rngs=nnx.Rngs(0))
    small = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
    out = model(small, train=False)
    assert out.tokens.shape == (2, 4, 1280)
    big = jax.image.resize(small, (2, 64, 64, 3), "bilinear")
    np.testing.assert_allclose(out.pooled, model(big, train=False).pooled, rtol=1e-5, atol=1e-5)


def test_resnet18_config_is_unchanged():
    fields = dataclasses.fields(ENCODERS.get("resnet18").Config)
    assert [(f.name, f.default) for f in fields] == [
        ("in_channels", 3),
        ("width", 64),
        ("stem", "imagenet"),
    ]


def _tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding, written out: output ceil(size / stride), extra at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("size", [8, 9, 16])
def test_tf_same_padding_matches_xla_same(kernel, size):
    """XLA's "SAME" is TF's: explicit pad + VALID conv equals it, for the stride-2 convs."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, size, size, 4), np.float32))
    block = TFConvBN(4, 4, kernel, 2, groups=4, act=False, rngs=nnx.Rngs(0))  # as in MBConv
    conv = block.conv
    pads = _tf_same_pads(size, kernel, 2)
    explicit = jax.lax.conv_general_dilated(
        jnp.pad(x, ((0, 0), pads, pads, (0, 0))),
        conv.kernel[...],
        (2, 2),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=4,
    )
    xla_same = jax.lax.conv_general_dilated(
        x,
        conv.kernel[...],
        (2, 2),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=4,
    )
    np.testing.assert_allclose(explicit, xla_same, atol=1e-5)
    # What the encoder runs: the block's own forward (same_conv, then BatchNorm with its fresh
    # running statistics, mean 0 and variance 1, so it only divides by sqrt(1 + eps)).
    np.testing.assert_allclose(
        block(x, train=False) * np.sqrt(1 + block.norm.epsilon), explicit, atol=1e-5
    )
    if size % 2 == 0:  # the even sizes are the asymmetric case: PyTorch's k // 2 differs
        assert pads[1] == pads[0] + 1
        symmetric = jax.lax.conv_general_dilated(
            x,
            conv.kernel[...],
            (2, 2),
            [(kernel // 2, kernel // 2)] * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=4,
        )
        assert not np.allclose(symmetric, explicit, atol=1e-3)


def test_vit_resamples_position_grid():
    """ViT-Ti at its 224/16 config takes a 64x64 input (a 4x4 grid resampled from 14x14)."""
    cls = ENCODERS.get("vit_ti")
    model = cls(cls.Config(), rngs=nnx.Rngs(0))
    assert model.pos_embed.shape == (1, 1 + 14 * 14, 192)
    np.testing.assert_array_equal(model.positions(14, 14), model.pos_embed[...])
    pos = model.positions(4, 4)
    assert pos.shape == (1, 17, 192)
    np.testing.assert_array_equal(pos[:, 0], model.pos_embed[:, 0])  # class position is kept
    x = jnp.asarray(np.random.default_rng(0).random((1, 64, 64, 3), np.float32))
    graphdef, state = nnx.split(model)
    out = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x, train=False))(state, x)
    assert out.tokens.shape == (1, 17, 192)
    assert out.token_mask.all()
    np.testing.assert_array_equal(out.pooled, out.tokens[:, 0])
    assert np.isfinite(np.asarray(out.tokens)).all()


def test_vgg_skips_pools_on_one_pixel_maps():
    """A 16x16 input reaches 1x1 after four pools; the fifth is skipped, not an empty map."""
    cls = ENCODERS.get("vgg11")
    out = nnx.eval_shape(
        lambda: cls(cls.Config(width=4), rngs=nnx.Rngs(0))(jnp.ones((1, 16, 16, 3)), train=False)
    )
    assert out.tokens.shape == (1, 1, 32)
