"""Attention and sequence fusion heads: CNN+RNN, MulT, MBT bottlenecks and a Perceiver.

Every head takes {modality: Features} + per-sample modality masks [B] -> fused vector [B, D].
A token is valid when its token_mask and its modality's mask are both True. Invalid tokens are
zeroed before any layer reads them and every attention masks them out as keys; cross-attention
adds a learned, always-valid null key/value, so a valid query always has a valid key and a
missing modality or a padding token can reach neither a valid output nor a NaN.
"""

import dataclasses

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from mmjax.errors import ConfigError
from mmjax.models.layers import (
    MLP,
    Features,
    TransformerBlock,
    masked_mean,
    sinusoidal_positions,
)
from mmjax.models.recurrent import run_rnn
from mmjax.registry import FUSIONS


def _valid(feature: Features, present: jax.Array) -> jax.Array:
    """[B, T] bool: the token is real (token_mask) and its modality is present (mask [B])."""
    return feature.token_mask & present[:, None]


def _embed(proj: nnx.Linear, feature: Features, valid: jax.Array) -> jax.Array:
    """Project tokens [B, T, D_m] to [B, T, D], add sine positions, zero invalid tokens."""
    x = proj(feature.tokens)
    x = x + sinusoidal_positions(x.shape[1], x.shape[2])
    return jnp.where(valid[..., None], x, 0.0)


def _masked_average(stack: jax.Array, present: jax.Array) -> jax.Array:
    """Mean of stack [M, B, ...] over the M entries present (present [M, B]); zeros if none is."""
    weights = jnp.expand_dims(present, tuple(range(2, stack.ndim))).astype(stack.dtype)
    total = jnp.sum(jnp.where(weights > 0, stack, 0.0), axis=0)
    return total / jnp.maximum(jnp.sum(weights, axis=0), 1.0)


class CrossAttentionBlock(nnx.Module):
    """Pre-norm cross-attention + MLP: queries x [B, Tq, D] attend to context [B, Tk, D].

    Keys are masked by context_mask [B, Tk]; a learned null key/value is always valid, so a query
    with no valid context reads only the null token (never a masked value), and nothing is NaN.
    """

    def __init__(self, dim: int, heads: int, *, dropout: float = 0.0, rngs: nnx.Rngs):
        self.norm_q = nnx.LayerNorm(dim, rngs=rngs)
        self.norm_kv = nnx.LayerNorm(dim, rngs=rngs)
        self.null = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (1, dim)))
        self.attn = nnx.MultiHeadAttention(
            heads, dim, dropout_rate=dropout, decode=False, rngs=rngs
        )
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.mlp = MLP((dim, 4 * dim, dim), dropout=dropout, rngs=rngs)

    def __call__(
        self, x: jax.Array, context: jax.Array, context_mask: jax.Array, *, train: bool
    ) -> jax.Array:
        batch = context.shape[0]
        context = jnp.where(context_mask[..., None], self.norm_kv(context), 0.0)
        null = jnp.broadcast_to(self.null[None], (batch, 1, context.shape[-1]))
        kv = jnp.concatenate([null, context], axis=1)
        keep = jnp.concatenate([jnp.ones((batch, 1), bool), context_mask], axis=1)
        attn_mask = keep[:, None, None, :]  # [B, heads, Tq, Tk] by broadcasting: keys only
        x = x + self.attn(self.norm_q(x), kv, mask=attn_mask, deterministic=not train)
        return x + self.mlp(self.norm2(x), train=train)


def _resample(tokens: jax.Array, valid: jax.Array, steps: int) -> tuple[jax.Array, jax.Array]:
    """Masked area resampling of tokens [B, T, D] to [B, steps, D], with a step mask [B, steps].

    The n valid tokens of a sample, in order, are laid end to end on [0, n); step s is the
    overlap-weighted average of the tokens covering [s n / steps, (s + 1) n / steps). This pools
    (n > steps) or repeats (n < steps) the valid tokens only; with n = 0 every step is masked.
    """
    weight = valid.astype(tokens.dtype)
    n = jnp.sum(weight, axis=1, keepdims=True)  # [B, 1]
    start = (jnp.cumsum(weight, axis=1) - weight)[:, None, :]  # rank of each valid token
    edges = jnp.arange(steps + 1, dtype=tokens.dtype)[None, :] * n / steps  # [B, steps + 1]
    lo, hi = edges[:, :-1, None], edges[:, 1:, None]
    overlap = jnp.clip(jnp.minimum(start + 1, hi) - jnp.maximum(start, lo), 0.0)
    overlap = overlap * weight[:, None, :]  # [B, steps, T]
    overlap = overlap / jnp.maximum(jnp.sum(overlap, axis=-1, keepdims=True), 1e-6)
    tokens = jnp.where(valid[..., None], tokens, 0.0)
    resampled = jnp.einsum("bst,btd->bsd", overlap, tokens)
    return resampled, jnp.broadcast_to(n > 0, (tokens.shape[0], steps))


@FUSIONS.register("cnn_rnn")
class CNNRNN(nnx.Module):
    """CNN+RNN fusion network: a conv over (time, modality), then an LSTM (generic; no one paper).

    1. Each modality's tokens are projected to `width` and resampled to `steps` time steps by
       masked area resampling (its valid tokens only, pooled or repeated; see `_resample`).
    2. The steps are stacked along a modality axis, [B, steps, M, width + 1], the extra channel
       being the modality's presence; a missing modality is all zeros.
    3. A 2-D conv with kernel (`kernel` steps, M modalities), no modality padding, mixes every
       modality at each step and its neighbours -> [B, steps, width] -> GELU -> dropout.
    4. An LSTM (`models/recurrent.py`) runs over the steps; its outputs are mean pooled over the
       steps where any modality is present (zeros when none is).

    Deviations from the paper: none (a generic baseline, not from one paper).
    """

    @dataclasses.dataclass(frozen=True)
    class Config:
        width: int = 64
        steps: int = 8
        kernel: int = 3
        hidden: int = 64
        dropout: float = 0.1

    def __init__(self, dims: dict[str, int], cfg: Config, *, rngs: nnx.Rngs):
        self.modalities, self.steps = tuple(sorted(dims)), cfg.steps
        self.proj = nnx.Dict({m: nnx.Linear(dims[m], cfg.width, rngs=rngs) for m in dims})
        pad = ((cfg.kernel // 2, (cfg.kernel - 1) // 2), (0, 0))
        self.conv = nnx.Conv(
            cfg.width + 1, cfg.width, (cfg.kernel, len(self.modalities)), padding=pad, rngs=rngs
        )
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.lstm = nnx.RNN(nnx.OptimizedLSTMCell(cfg.width, cfg.hidden, rngs=rngs))
        self.dim = cfg.hidden

    def __call__(
        self, features: dict[str, Features], modality_mask: dict[str, jax.Array], *, train: bool
    ) -> jax.Array:
        stacked, step_masks = [], []
        for m in self.modalities:
            valid = _valid(features[m], modality_mask[m])
            x, step_mask = _resample(self.proj[m](features[m].tokens), valid, self.steps)
            flag = step_mask.astype(x.dtype)[..., None]
            stacked.append(jnp.concatenate([x * flag, flag], axis=-1))
            step_masks.append(step_mask)
        x = jnp.stack(stacked, axis=2)  # [B, steps, M, width + 1]
        x = rearrange(self.conv(x), "b s 1 c -> b s c")
        x = self.dropout(nnx.gelu(x), deterministic=not train)
        return masked_mean(run_rnn(self.lstm, x), jnp.any(jnp.stack(step_masks, axis=-1), axis=-1))


@FUSIONS.register("mult")
class MulT(nnx.Module):
    """MulT cross-modal transformer (Tsai et al. 2019): each modality queries every other one.

    For each target modality t, its tokens (projected to `dim`, sine positions) run through
    `cross_layers` cross-attention blocks against each source s != t (keys masked by s's valid
    tokens, plus a learned null key); the M-1 outputs are concatenated along features
    ([B, T_t, (M-1) dim]; a lone modality uses its own tokens) and run through `self_layers`
    self-attention blocks. Each target is masked mean pooled, zeroed when missing, concatenated
    with presence flags and mapped by an MLP to `dim`.

    Deviations from the paper: each target sequence is mean pooled over its valid tokens where
    MulT takes its last time step, and the output MLP (GELU, presence flags appended) has no
    residual connection (the authors' code: a ReLU MLP with one). Cross-attention has a learned
    null key/value.
    """

    @dataclasses.dataclass(frozen=True)
    class Config:
        dim: int = 64
        heads: int = 4
        cross_layers: int = 1
        self_layers: int = 1
        dropout: float = 0.1

    def __init__(self, dims: dict[str, int], cfg: Config, *, rngs: nnx.Rngs):
        self.modalities = tuple(sorted(dims))
        ms = self.modalities
        self.proj = nnx.Dict({m: nnx.Linear(dims[m], cfg.dim, rngs=rngs) for m in ms})
        self.cross = nnx.Dict(
            {
                f"{s}_to_{t}": nnx.List(
                    [
                        CrossAttentionBlock(cfg.dim, cfg.heads, dropout=cfg.dropout, rngs=rngs)
                        for _ in range(cfg.cross_layers)
                    ]
                )
                for t in ms
                for s in ms
                if s != t
            }
        )
        width = cfg.dim * max(len(ms) - 1, 1)
        self.blocks = nnx.Dict(
            {
                t: nnx.List(
                    [
                        TransformerBlock(width, cfg.heads, dropout=cfg.dropout, rngs=rngs)
                        for _ in range(cfg.self_layers)
                    ]
                )
                for t in ms
            }
        )
        self.norm = nnx.Dict({t: nnx.LayerNorm(width, rngs=rngs) for t in ms})
        self.mlp = MLP((len(ms) * (width + 1), cfg.dim, cfg.dim), dropout=cfg.dropout, rngs=rngs)
        self.dim = cfg.dim

    def __call__(
        self, features: dict[str, Features], modality_mask: dict[str, jax.Array], *, train: bool
    ) -> jax.Array:
        valid = {m: _valid(features[m], modality_mask[m]) for m in self.modalities}
        tokens = {m: _embed(self.proj[m], features[m], valid[m]) for m in self.modalities}
        parts = []
        for t in self.modalities:
            crossed = []
            for s in self.modalities:
                if s == t:
                    continue
                x = tokens[t]
                for block in self.cross[f"{s}_to_{t}"]:
                    x = block(x, tokens[s], valid[s], train=train)
                crossed.append(x)
            x = jnp.concatenate(crossed, axis=-1) if crossed else tokens[t]
            x = jnp.where(valid[t][..., None], x, 0.0)
            for block in self.blocks[t]:
                x = block(x, valid[t], train=train)
            present = modality_mask[t].astype(x.dtype)[:, None]
            pooled = masked_mean(self.norm[t](x), valid[t])
            parts += [jnp.where(present > 0, pooled, 0.0), present]
        return nnx.gelu(self.mlp(jnp.concatenate(parts, axis=-1), train=train))


@FUSIONS.register("mbt")
class MBT(nnx.Module):
    """Attention bottlenecks for multimodal fusion, MBT (Nagrani et al. 2021).

    One TransformerBlock stack of `depth` layers per modality over its tokens (projected to `dim`,
    sine positions). From layer `fusion_layer` on, each modality's layer also sees `n_bottlenecks`
    shared bottleneck tokens; the next bottleneck is the mean over present modalities of their
    bottleneck outputs (a missing modality contributes nothing). fusion_layer=0 fuses from the
    first layer, fusion_layer=depth never (late fusion). As in the paper, the first fusion layer
    reads the learned bottleneck and only writes a fused one, so modalities exchange information
    from the second fusion layer on (fusion_layer=depth-1 is still late). Output: the mean over
    present modalities of their pooled tokens, projected by a linear layer.

    Deviations from the paper: sine positions where MBT learns position embeddings, and each
    modality is mean pooled over its valid tokens where MBT reads its CLS token. The linear map
    of the mean over modalities equals MBT's mean of per-modality logits from a shared linear
    classifier, but training takes the loss of that mean (Scenic's MBT averages per-modality
    losses).
    """

    @dataclasses.dataclass(frozen=True)
    class Config:
        dim: int = 64
        depth: int = 3
        fusion_layer: int = 1  # mid fusion: layers 1 and 2 exchange through the bottleneck
        n_bottlenecks: int = 4
        heads: int = 4
        dropout: float = 0.1

    def __init__(self, dims: dict[str, int], cfg: Config, *, rngs: nnx.Rngs):
        if not 0 <= cfg.fusion_layer <= cfg.depth:
            raise ConfigError(
                f"mbt.fusion_layer must be in [0, depth={cfg.depth}], got {cfg.fusion_layer}"
            )
        self.modalities = tuple(sorted(dims))
        self.depth, self.fusion_layer = cfg.depth, cfg.fusion_layer
        self.proj = nnx.Dict({m: nnx.Linear(dims[m], cfg.dim, rngs=rngs) for m in self.modalities})
        self.blocks = nnx.Dict(
            {
                m: nnx.List(
                    [
                        TransformerBlock(cfg.dim, cfg.heads, dropout=cfg.dropout, rngs=rngs)
                        for _ in range(cfg.depth)
                    ]
                )
                for m in self.modalities
            }
        )
        self.bottleneck = nnx.Param(
            nnx.initializers.normal(0.02)(rngs.params(), (cfg.n_bottlenecks, cfg.dim))
        )
        self.norm = nnx.Dict({m: nnx.LayerNorm(cfg.dim, rngs=rngs) for m in self.modalities})
        self.out = nnx.Linear(cfg.dim, cfg.dim, rngs=rngs)
        self.dim = cfg.dim

    def encode(
        self, features: dict[str, Features], modality_mask: dict[str, jax.Array], *, train: bool
    ) -> dict[str, jax.Array]:
        """Each modality's pooled representation {m: [B, dim]} after the `depth` layers."""
        valid = {m: _valid(features[m], modality_mask[m]) for m in self.modalities}
        xs = {m: _embed(self.proj[m], features[m], valid[m]) for m in self.modalities}
        batch = next(iter(xs.values())).shape[0]
        shared = jnp.broadcast_to(self.bottleneck[None], (batch, *self.bottleneck.shape))
        shared_mask = jnp.ones(shared.shape[:2], bool)
        present = jnp.stack([modality_mask[m] for m in self.modalities])  # [M, B]
        for layer in range(self.depth):
            if layer < self.fusion_layer:
                for m in self.modalities:
                    xs[m] = self.blocks[m][layer](xs[m], valid[m], train=train)
                continue
            outs = []
            for m in self.modalities:
                length = xs[m].shape[1]
                z = jnp.concatenate([xs[m], shared], axis=1)
                mask = jnp.concatenate([valid[m], shared_mask], axis=1)
                z = self.blocks[m][layer](z, mask, train=train)
                xs[m] = z[:, :length]
                outs.append(z[:, length:])
            shared = _masked_average(jnp.stack(outs), present)
        return {m: masked_mean(self.norm[m](xs[m]), valid[m]) for m in self.modalities}

    def __call__(
        self, features: dict[str, Features], modality_mask: dict[str, jax.Array], *, train: bool
    ) -> jax.Array:
        pooled = self.encode(features, modality_mask, train=train)
        stack = jnp.stack([pooled[m] for m in self.modalities])  # [M, B, dim]
        present = jnp.stack([modality_mask[m] for m in self.modalities])
        return self.out(_masked_average(stack, present))


@FUSIONS.register("perceiver")
class Perceiver(nnx.Module):
    """Perceiver latent cross-attention fusion (Jaegle et al. 2021).

    Every modality's tokens are projected to `dim` plus sine positions and a learned modality
    embedding, then concatenated; `n_latents` learned latents cross-attend to them (keys masked by
    token and modality masks, plus a learned always-valid null key), run `depth` latent
    self-attention blocks, and are layer-normed and averaged -> [B, dim].

    Deviations from the paper: one cross-attention, where the Perceiver repeats cross-attention
    and latent blocks. Sine positions and the modality embedding are added to the tokens, where
    the paper concatenates Fourier features and a modality code. The null key is this library's.
    """

    @dataclasses.dataclass(frozen=True)
    class Config:
        dim: int = 64
        n_latents: int = 8
        depth: int = 1
        heads: int = 4
        dropout: float = 0.1

    def __init__(self, dims: dict[str, int], cfg: Config, *, rngs: nnx.Rngs):
        self.modalities = tuple(sorted(dims))
        self.proj = nnx.Dict({m: nnx.Linear(dims[m], cfg.dim, rngs=rngs) for m in self.modalities})
        init = nnx.initializers.normal(0.02)
        self.modality_embed = nnx.Param(init(rngs.params(), (len(self.modalities), cfg.dim)))
        self.latents = nnx.Param(init(rngs.params(), (cfg.n_latents, cfg.dim)))
        self.cross = CrossAttentionBlock(cfg.dim, cfg.heads, dropout=cfg.dropout, rngs=rngs)
        self.blocks = nnx.List(
            [
                TransformerBlock(cfg.dim, cfg.heads, dropout=cfg.dropout, rngs=rngs)
                for _ in range(cfg.depth)
            ]
        )
        self.norm = nnx.LayerNorm(cfg.dim, rngs=rngs)
        self.dim = cfg.dim

    def __call__(
        self, features: dict[str, Features], modality_mask: dict[str, jax.Array], *, train: bool
    ) -> jax.Array:
        tokens, masks = [], []
        for i, m in enumerate(self.modalities):
            valid = _valid(features[m], modality_mask[m])
            x = _embed(self.proj[m], features[m], valid) + self.modality_embed[i]
            tokens.append(jnp.where(valid[..., None], x, 0.0))
            masks.append(valid)
        context, mask = jnp.concatenate(tokens, axis=1), jnp.concatenate(masks, axis=1)
        latents = jnp.broadcast_to(self.latents[None], (context.shape[0], *self.latents.shape))
        x = self.cross(latents, context, mask, train=train)
        latent_mask = jnp.ones(x.shape[:2], bool)
        for block in self.blocks:
            x = block(x, latent_mask, train=train)
        return jnp.mean(self.norm(x), axis=1)
