"""Shared NNX building blocks and the Features type every encoder returns."""

import itertools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx


class Features(NamedTuple):
    """An encoder's output: token features for attention fusions, pooled ones for vector fusions.

    tokens [B, T, D], token_mask [B, T] bool (False = padding), pooled [B, D].
    """

    tokens: jax.Array
    token_mask: jax.Array
    pooled: jax.Array


def masked_mean(tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over axis 1 of tokens [B, T, D] where mask [B, T] is True; zeros if none is."""
    weights = mask.astype(tokens.dtype)[..., None]
    total = jnp.sum(tokens * weights, axis=1)
    return total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


def features_from_tokens(tokens: jax.Array, token_mask: jax.Array | None = None) -> Features:
    """Features with a masked-mean pooled vector; tokens [B, T, D]."""
    if token_mask is None:
        token_mask = jnp.ones(tokens.shape[:2], dtype=bool)
    return Features(tokens, token_mask, masked_mean(tokens, token_mask))


class MLP(nnx.Module):
    """Linear -> GELU -> dropout, repeated; the last layer is linear only. x [..., D_in]."""

    def __init__(self, dims: tuple[int, ...], *, dropout: float = 0.0, rngs: nnx.Rngs):
        self.layers = nnx.List(
            [nnx.Linear(d_in, d_out, rngs=rngs) for d_in, d_out in itertools.pairwise(dims)]
        )
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.dropout(nnx.gelu(x), deterministic=not train)
        return x


class ConvBNReLU(nnx.Module):
    """Conv (no bias) -> BatchNorm -> optional ReLU over NHWC images."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int = 3,
        stride: int = 1,
        *,
        relu: bool = True,
        rngs: nnx.Rngs,
    ):
        self.conv = nnx.Conv(
            c_in, c_out, (kernel, kernel), (stride, stride), use_bias=False, rngs=rngs
        )
        self.norm = nnx.BatchNorm(c_out, momentum=0.9, rngs=rngs)
        self.relu = relu

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = self.norm(self.conv(x), use_running_average=not train)
        return nnx.relu(x) if self.relu else x


def sinusoidal_positions(length: int, dim: int) -> jax.Array:
    """Fixed sine/cosine position codes (Vaswani et al. 2017), [length, dim]."""
    position = jnp.arange(length, dtype=jnp.float32)[:, None]
    freq = jnp.exp(-jnp.log(10000.0) * jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    angles = position * freq[None, :]
    codes = jnp.zeros((length, dim), jnp.float32)
    codes = codes.at[:, 0::2].set(jnp.sin(angles))
    return codes.at[:, 1::2].set(jnp.cos(angles[:, : dim // 2]))


class TransformerBlock(nnx.Module):
    """Pre-norm self-attention + MLP block over tokens [B, T, D] with a key mask [B, T]."""

    def __init__(self, dim: int, heads: int, *, dropout: float = 0.0, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            heads, dim, dropout_rate=dropout, decode=False, rngs=rngs
        )
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.mlp = MLP((dim, 4 * dim, dim), dropout=dropout, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        attn_mask = nnx.make_attention_mask(mask, mask)
        x = x + self.attn(self.norm1(x), mask=attn_mask, deterministic=not train)
        return x + self.mlp(self.norm2(x), train=train)


def jit_init(factory: Callable[[], nnx.Module]) -> nnx.Module:
    """Build `factory()` as one compiled program: eager NNX init dispatches (and compiles)
    every initialiser separately, which takes tens of seconds for a large CNN on a CPU."""
    graphdef, _ = nnx.split(nnx.eval_shape(factory))
    state = jax.jit(lambda: nnx.split(factory())[1])()
    return nnx.merge(graphdef, state)
