"""Gating and set fusion heads: modalities weight, gate or modulate each other, or form a set.

Every head follows the contract of `mmjax.models.fusion`: a modality masked out for a sample has
no influence on that sample's output, and a sample with every modality missing stays finite.
Features of a missing modality are replaced by zeros before any arithmetic. Per head:

- gmu: gate logits come from the zeroed features and a missing modality's gates are exactly 0;
  with two modalities the present one then takes the whole weight (z or 1 - z is 1). None
  present: zeros.
- nl_gate: keys/values of a missing modality (and padding tokens) are masked out of the
  attention; with no key left the attended output is 0, leaving the residual query alone. A
  missing query modality is replaced by a learned null query token.
- film: a missing conditioning modality adds nothing to gamma - 1 and beta (identity FiLM);
  a missing modulated (first) modality is replaced by a learned null vector.
- attention_sum: masked softmax over the present modalities; none present: zeros.
- deep_sets: the set is the present modalities (masked sum or mean); none present: rho(0).
"""

import dataclasses

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.errors import ConfigError
from mmjax.models.layers import MLP, Features, masked_mean, present_pooled
from mmjax.registry import FUSIONS

# Finite stand-in for -inf: exp(_NEG - max) is exactly 0 in float32, and no inf - inf = NaN.
_NEG = -1e30


def _masked_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax over the last axis restricted to `mask`; all zeros where no entry is unmasked."""
    weights = jax.nn.softmax(jnp.where(mask, logits, _NEG), axis=-1)
    return jnp.where(mask, weights, 0.0)


@FUSIONS.register("gmu")
class GMU(nnx.Module):
    """Gated multimodal unit: gate-weighted sum of tanh projections (Arevalo et al. 2017).

    h_m = tanh(W_m z_m) [B, H]; the gate z = σ(W_z [z_0; z_1]) [B, H] has one entry per hidden
    unit (as in the paper and the authors' GatedBimodal), and h = z ∘ h_0 + (1 - z) ∘ h_1.

    Deviations from the paper: the paper fuses two modalities; with more, each modality m gets
    its own gate vector z_m = σ(W_zm [z_0; ...; z_M-1]) and h = Σ_m z_m ∘ h_m.
    """

    @dataclasses.dataclass(frozen=True)
    class Config:
        hidden: int = 64

    def __init__(self, dims: dict[str, int], cfg: Config, *, rngs: nnx.Rngs):
        self.modalities = tuple(sorted(dims))
        self.proj = nnx.Dict(
            {m: nnx.Linear(dims[m], cfg.hidden, rngs=rngs) for m in self.modalities}
        )
        # Two modalities: the single gate vector z (1 - z for the second); else one per modality.
        gates = 1 if len(dims) == 2 else len(dims)
        self.gate = nnx.Linear(sum(dims.values()), gates * cfg.hidden, rngs=rngs)
        self.dim = cfg.hidden

    def __call__(
        self, features: dict[str, Features], modality_mask: dict[str, jax.Array], *, train: bool
    ) -> jax.Array:
        zs = [present_pooled(features, modality_mask, m)[1] for m in self.modalities]
        hs = jnp.stack([jnp.tanh(self.proj[m](z)) for m, z in zip(self.modalities, zs)], axis=1)
        logits = self.gate(jnp.concatenate(zs, axis=-1))
        present = jnp.stack([modality_mask[m] for m in self.modalities], axis=1)[:, None, :]
        if len(self.modalities) == 2:  # [σ(l), 1 - σ(l)] = softmax([l, 0]), per hidden unit
            pair = jnp.stack([logits, jnp.zeros_like(logits)], axis=-1)  # [B, H, 2]
            gates = _masked_softmax(pair, present)  # one missing: the other's gate is 1
        else:
            gates = einops.rearrange(nnx.sigmoid(logits), "b (m h) -> b h m", m=len(zs))
            gates = jnp.where(present, gates, 0.0)
        return einops.einsum(gates, hs, "b h m, b m h -> b h")


@FUSIONS.register("nl_gate")
class NLGate(nnx.Module):
    """Non-local gate: query tokens plus their attention over the others (Wang et al. 2020).

    The query modality's tokens [B, T, D_q] are projected, q = Q x [B, T, dim]; the other
    modalities' valid tokens, concatenated [B, S, D_c], give keys k = K c and values v = V c
    [B, S, dim]. Each query token becomes y_t = q_t + Σ_s softmax_s(q_t · k_s) v_s: the non-local
    block's embedded-Gaussian attention (no 1/sqrt(dim) scaling) added to the query as a
    residual, as in the paper's appendix and MultiBench's NLgate. Output: the masked mean of y
    over the query's valid tokens [B, dim].

    Deviations from the paper: y is mean pooled over the query tokens (MultiBench flattens it)
    so that the head returns [B, dim]. The gate acts once on the encoders' output tokens, not
    inside the visual backbone, and with three or more modalities the keys are every other
    modality's tokens together.
    """

    @dataclasses.dataclass(frozen=True)
    class Config:
        dim: int = 64
        query: str = ""  # the modality that queries; "" = the first in sorted order

    def __init__(self, dims: dict[str, int], cfg: Config, *, rngs: nnx.Rngs):
        self.modalities = tuple(sorted(dims))
        if cfg.query and cfg.query not in dims:
            raise ConfigError(
                f"nl_gate query {cfg.query!r} is not one of the modalities {list(self.modalities)}"
            )
        self.query = cfg.query or self.modalities[0]
        self.context = tuple(m for m in self.modalities if m != self.query)
        self.q = nnx.Linear(dims[self.query], cfg.dim, rngs=rngs)
        self.null = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (cfg.dim,)))
        self.k = nnx.Dict({m: nnx.Linear(dims[m], cfg.dim, rngs=rngs) for m in self.context})
        self.v = nnx.Dict({m: nnx.Linear(dims[m], cfg.dim, rngs=rngs) for m in self.context})
        self.dim = cfg.dim

    def __call__(
        self, features: dict[str, Features], modality_mask: dict[str, jax.Array], *, train: bool
    ) -> jax.Array:
        present = modality_mask[self.query][:, None]
        tokens, token_mask = features[self.query].tokens, features[self.query].token_mask
        valid = token_mask & present
        q = self.q(jnp.where(valid[..., None], tokens, 0.0))  # [B, T, dim]
        q = jnp.where(present[..., None], q, self.null[...])  # missing: the null query
        query_mask = jnp.where(present, token_mask, True)
        attended = jnp.zeros_like(q)
        if self.context:
            keys, values, key_masks = [], [], []
            for m in self.context:
                mask = features[m].token_mask & modality_mask[m][:, None]
                context = jnp.where(mask[..., None], features[m].tokens, 0.0)
                keys.append(self.k[m](context))
                values.append(self.v[m](context))
                key_masks.append(mask)
            keys, values = jnp.concatenate(keys, axis=1), jnp.concatenate(values, axis=1)
            key_mask = jnp.concatenate(key_masks, axis=1)
            scores = einops.einsum(q, keys, "b t d, b s d -> b t s")
            weights = _masked_softmax(scores, key_mask[:, None, :])  # no keys: all zeros
            attended = einops.einsum(weights, values, "b t s, b s d -> b t d")
        return masked_mean(q + attended, query_mask)


@FUSIONS.register("film")
class FiLM(nnx.Module):
    """Feature-wise linear modulation of the first modality by the others (Perez et al. 2018).

    x = z_0 [B, D_0] is modulated feature-wise, γ ∘ x + β, with [γ - 1; β] = Σ_m (W_m z_m + b_m)
    over the other (conditioning) modalities, then mapped by an MLP -> [B, hidden].

    Deviations from the paper: FiLM modulates the first modality's pooled vector once, where the
    paper modulates the feature maps of every residual block; the MLP stands for the FiLM-ed
    network's remaining layers. Each conditioning modality has a linear generator and their
    outputs add up (the paper has one generator, a GRU over the question).
    """

    @dataclasses.dataclass(frozen=True)
    class Config:
        hidden: int = 64
        dropout: float = 0.1

    def __init__(self, dims: dict[str, int], cfg: Config, *, rngs: nnx.Rngs):
        self.modalities = tuple(sorted(dims))
        first, *rest = self.modalities
        width = dims[first]
        self.null = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (width,)))
        # One generator per conditioning modality, [delta_gamma, beta], summed over present ones:
        # a Linear over their concatenation, with the bias split so that a missing one adds 0.
        self.film = nnx.Dict({m: nnx.Linear(dims[m], 2 * width, rngs=rngs) for m in rest})
        self.mlp = MLP((width, cfg.hidden, cfg.hidden), dropout=cfg.dropout, rngs=rngs)
        self.dim = cfg.hidden

    def __call__(
        self, features: dict[str, Features], modality_mask: dict[str, jax.Array], *, train: bool
    ) -> jax.Array:
        first, *rest = self.modalities
        present, z = present_pooled(features, modality_mask, first)
        x = jnp.where(present, z, self.null[...])
        gamma, beta = jnp.ones_like(x), jnp.zeros_like(x)
        for m in rest:
            present, z = present_pooled(features, modality_mask, m)
            delta, shift = jnp.split(jnp.where(present, self.film[m](z), 0.0), 2, axis=-1)
            gamma, beta = gamma + delta, beta + shift
        return nnx.gelu(self.mlp(gamma * x + beta, train=train))


@FUSIONS.register("attention_sum")
class AttentionSum(nnx.Module):
    """Attention-weighted sum of modality vectors, additive scorer (Bahdanau et al. 2015).

    v_m = P_m z_m [B, D]; α = softmax_m(w · tanh(W v_m + b)) over the present modalities;
    output Σ_m α_m v_m [B, D].

    Deviations from the paper: the score reads only the modality vector, with a learned w in
    place of Bahdanau's decoder state (the attention pooling of Yang et al. 2016), and it weighs
    modalities rather than time steps.
    """

    @dataclasses.dataclass(frozen=True)
    class Config:
        dim: int = 64

    def __init__(self, dims: dict[str, int], cfg: Config, *, rngs: nnx.Rngs):
        self.modalities = tuple(sorted(dims))
        self.proj = nnx.Dict({m: nnx.Linear(dims[m], cfg.dim, rngs=rngs) for m in self.modalities})
        self.score_hidden = nnx.Linear(cfg.dim, cfg.dim, rngs=rngs)
        self.score = nnx.Linear(cfg.dim, 1, rngs=rngs)
        self.dim = cfg.dim

    def __call__(
        self, features: dict[str, Features], modality_mask: dict[str, jax.Array], *, train: bool
    ) -> jax.Array:
        vectors = []
        for m in self.modalities:
            present, z = present_pooled(features, modality_mask, m)
            vectors.append(jnp.where(present, self.proj[m](z), 0.0))
        x = jnp.stack(vectors, axis=1)  # [B, M, D]
        logits = self.score(jnp.tanh(self.score_hidden(x)))[..., 0]
        present = jnp.stack([modality_mask[m] for m in self.modalities], axis=1)
        weights = _masked_softmax(logits, present)
        return einops.einsum(weights, x, "b m, b m d -> b d")


@FUSIONS.register("deep_sets")
class DeepSets(nnx.Module):
    """Deep Sets over the present modalities: rho(pool_m phi(P_m z_m)) (Zaheer et al. 2017).

    Deviations from the paper: each modality is first projected to a shared width by its own
    P_m (the paper's set elements already share one space). `pooling="mean"` is offered beside
    the paper's sum (the default).
    """

    @dataclasses.dataclass(frozen=True)
    class Config:
        dim: int = 64
        hidden: int = 64
        pooling: str = "sum"  # "sum" or "mean" over the present modalities
        dropout: float = 0.1

    def __init__(self, dims: dict[str, int], cfg: Config, *, rngs: nnx.Rngs):
        if cfg.pooling not in ("sum", "mean"):
            raise ConfigError(f"deep_sets pooling must be 'sum' or 'mean', got {cfg.pooling!r}")
        self.modalities = tuple(sorted(dims))
        self.pooling = cfg.pooling
        self.proj = nnx.Dict({m: nnx.Linear(dims[m], cfg.dim, rngs=rngs) for m in self.modalities})
        self.phi = MLP((cfg.dim, cfg.hidden, cfg.dim), dropout=cfg.dropout, rngs=rngs)
        self.rho = MLP((cfg.dim, cfg.hidden, cfg.hidden), dropout=cfg.dropout, rngs=rngs)
        self.dim = cfg.hidden

    def __call__(
        self, features: dict[str, Features], modality_mask: dict[str, jax.Array], *, train: bool
    ) -> jax.Array:
        x = jnp.stack(
            [self.proj[m](present_pooled(features, modality_mask, m)[1]) for m in self.modalities],
            axis=1,
        )  # [B, M, D]
        present = jnp.stack([modality_mask[m] for m in self.modalities], axis=1)
        elements = self.phi(x, train=train)
        if self.pooling == "mean":
            pooled = masked_mean(elements, present)
        else:
            pooled = jnp.sum(jnp.where(present[..., None], elements, 0.0), axis=1)
        return nnx.gelu(self.rho(pooled, train=train))
