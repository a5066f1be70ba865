"""Fusion heads: {modality: Features} + per-sample modality masks [B] -> fused vector [B, D].

Every head accepts any subset of its modalities and a modality missing for some samples
(mask False): a missing modality contributes nothing but its absence.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.models.layers import MLP, Features, TransformerBlock, masked_mean
from mmjax.registry import FUSIONS


@FUSIONS.register("late_concat")
class LateConcat(nnx.Module):
    """Late fusion: concatenate pooled features (zeroed when missing) and presence flags -> MLP.

    Deviations from the paper: a generic baseline, not from one paper. Unlike MultiBench's Concat
    it appends presence flags, so the MLP can tell a missing modality from zero features.
    """

    @dataclasses.dataclass(frozen=True)
    class Config:
        hidden: int = 128
        dropout: float = 0.1

    def __init__(self, dims: dict[str, int], cfg: Config, *, rngs: nnx.Rngs):
        self.modalities = tuple(sorted(dims))
        width = sum(dims.values()) + len(dims)
        self.mlp = MLP((width, cfg.hidden, cfg.hidden), dropout=cfg.dropout, rngs=rngs)
        self.dim = cfg.hidden

    def __call__(
        self, features: dict[str, Features], modality_mask: dict[str, jax.Array], *, train: bool
    ) -> jax.Array:
        parts = []
        for m in self.modalities:
            present = modality_mask[m].astype(jnp.float32)[:, None]
            parts += [features[m].pooled * present, present]
        return nnx.gelu(self.mlp(jnp.concatenate(parts, axis=-1), train=train))


@FUSIONS.register("early_concat")
class EarlyConcat(nnx.Module):
    """Early fusion: project every modality's tokens to one width, tag them with a learned
    modality embedding, concatenate along time and run joint Transformer blocks over them.

    Deviations from the paper: none (a generic baseline, not from one paper).
    """

    @dataclasses.dataclass(frozen=True)
    class Config:
        dim: int = 64
        layers: int = 2
        heads: int = 4
        dropout: float = 0.1

    def __init__(self, dims: dict[str, int], cfg: Config, *, rngs: nnx.Rngs):
        self.modalities = tuple(sorted(dims))
        self.proj = nnx.Dict({m: nnx.Linear(dims[m], cfg.dim, rngs=rngs) for m in self.modalities})
        self.modality_embed = nnx.Param(
            nnx.initializers.normal(0.02)(rngs.params(), (len(self.modalities), cfg.dim))
        )
        self.blocks = nnx.List(
            [
                TransformerBlock(cfg.dim, cfg.heads, dropout=cfg.dropout, rngs=rngs)
                for _ in range(cfg.layers)
            ]
        )
        self.norm = nnx.LayerNorm(cfg.dim, rngs=rngs)
        self.dim = cfg.dim

    def __call__(
        self, features: dict[str, Features], modality_mask: dict[str, jax.Array], *, train: bool
    ) -> jax.Array:
        tokens, masks = [], []
        for i, m in enumerate(self.modalities):
            tokens.append(self.proj[m](features[m].tokens) + self.modality_embed[i])
            masks.append(features[m].token_mask & modality_mask[m][:, None])
        x, mask = jnp.concatenate(tokens, axis=1), jnp.concatenate(masks, axis=1)
        for block in self.blocks:
            x = block(x, mask, train=train)
        return masked_mean(self.norm(x), mask)
