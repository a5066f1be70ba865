"""Attention fusion heads: MBT early/late fusion, padding and missing-modality masks, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax.models.fusion_attention import MBT
from mmjax.models.layers import Features
from mmjax.registry import FUSIONS

B = 2
DIMS = {"audio": 24, "image": 16}
HEADS = ["cnn_rnn", "mbt", "mult", "perceiver"]


def _features(seed: int, lengths: dict[str, int] | None = None) -> dict[str, Features]:
    """Random features; sample 0 of each modality has its last two tokens padded."""
    rng = np.random.default_rng(seed)
    lengths = lengths or {"audio": 6, "image": 5}
    out = {}
    for m, d in DIMS.items():
        tokens = jnp.asarray(rng.standard_normal((B, lengths[m], d), np.float32))
        mask = jnp.ones((B, lengths[m]), bool).at[0, -2:].set(False)
        out[m] = Features(tokens, mask, tokens.mean(1))
    return out


def _present() -> dict[str, jax.Array]:
    return {m: jnp.ones((B,), bool) for m in DIMS}


@pytest.mark.parametrize(
    "depth, fusion_layer, independent", [(2, 2, True), (2, 1, True), (2, 0, False), (3, 1, False)]
)
def test_mbt_fusion_layer_controls_interaction(depth, fusion_layer, independent):
    """fusion_layer=depth is late fusion: a modality's representation ignores the others.

    Bottlenecks carry information across modalities from the second fusion layer on, so a single
    fusion layer (fusion_layer=depth-1) is late too, and fusion_layer<=depth-2 interacts.
    """
    fusion = MBT(DIMS, MBT.Config(depth=depth, fusion_layer=fusion_layer), rngs=nnx.Rngs(0))
    a, b = _features(0), _features(1)
    b["image"] = a["image"]  # only audio differs
    image_a = fusion.encode(a, _present(), train=False)["image"]
    image_b = fusion.encode(b, _present(), train=False)["image"]
    assert np.allclose(image_a, image_b, atol=1e-6) == independent


@pytest.mark.parametrize("name", HEADS)
def test_padding_tokens_do_not_matter(name):
    """Padding values (token_mask False), or more padding, leave the output unchanged."""
    cls = FUSIONS.get(name)
    fusion = cls(DIMS, cls.Config(), rngs=nnx.Rngs(0))
    base = _features(0)
    out = fusion(base, _present(), train=False)
    noisy, longer = {}, {}
    for m, f in base.items():
        noise = 100.0 * jnp.asarray(np.random.default_rng(7).standard_normal(f.tokens.shape))
        noisy[m] = f._replace(tokens=jnp.where(f.token_mask[..., None], f.tokens, noise))
        pad = jnp.full((B, 3, f.tokens.shape[2]), 50.0)
        longer[m] = Features(
            jnp.concatenate([f.tokens, pad], axis=1),
            jnp.concatenate([f.token_mask, jnp.zeros((B, 3), bool)], axis=1),
            f.pooled,
        )
    np.testing.assert_allclose(fusion(noisy, _present(), train=False), out, atol=1e-5)
    np.testing.assert_allclose(fusion(longer, _present(), train=False), out, atol=1e-5)


@pytest.mark.parametrize("name", HEADS)
def test_every_modality_missing(name):
    """A sample with no modality present gets a finite output that reads none of its tokens."""
    cls = FUSIONS.get(name)
    fusion = cls(DIMS, cls.Config(), rngs=nnx.Rngs(0))
    masks = {m: jnp.array([False, True]) for m in DIMS}
    out_a = fusion(_features(0), masks, train=False)
    out_b = fusion(_features(1), masks, train=False)
    assert np.isfinite(np.asarray(out_a)).all() and np.isfinite(np.asarray(out_b)).all()
    np.testing.assert_allclose(out_a[0], out_b[0], atol=1e-5)
    assert not np.allclose(out_a[1], out_b[1], atol=1e-5)


@pytest.mark.parametrize("name", HEADS)
def test_jit_traces_once(name):
    cls = FUSIONS.get(name)
    graphdef, params, rest = nnx.split(cls(DIMS, cls.Config(), rngs=nnx.Rngs(0)), nnx.Param, ...)
    traces = []

    @jax.jit
    def forward(params, rest, features, masks):
        traces.append(1)
        return nnx.merge(graphdef, params, rest)(features, masks, train=False)

    masks = {"audio": jnp.array([False, True]), "image": jnp.array([True, True])}
    outs = [forward(params, rest, _features(seed), masks) for seed in range(3)]
    assert len(traces) == 1
    assert all(o.shape == (B, 64) and np.isfinite(np.asarray(o)).all() for o in outs)
