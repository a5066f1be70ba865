"""Two-tower contrastive heads: every modality is embedded in one shared, normalised space.

The fused vector is the mean of the present modalities' unit embeddings, so a classifier can
sit on top; `aux_loss` adds the contrastive objective over every pair of modalities, on the
samples where both are present. Embeddings of one modality can be matched against another's
for zero-shot classification (`embed`).
"""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mmjax.models.layers import Features
from mmjax.registry import FUSIONS


class _TwoTower(nnx.Module):
    """Shared machinery: per-modality projections to unit vectors and the pair loop."""

    @dataclasses.dataclass(frozen=True)
    class Config:
        dim: int = 64
        weight: float = 1.0  # weight of the contrastive term in the training loss

    def __init__(self, dims: dict[str, int], cfg: Config, *, rngs: nnx.Rngs):
        self.modalities = tuple(sorted(dims))
        self.proj = nnx.Dict({m: nnx.Linear(dims[m], cfg.dim, rngs=rngs) for m in self.modalities})
        self.weight = cfg.weight
        self.dim = cfg.dim

    def embed(self, features: dict[str, Features]) -> dict[str, jax.Array]:
        """{modality: unit embedding [B, dim]}."""
        out = {}
        for m in self.modalities:
            z = self.proj[m](features[m].pooled)
            out[m] = z * jax.lax.rsqrt(jnp.sum(z * z, -1, keepdims=True) + 1e-12)
        return out

    def __call__(
        self, features: dict[str, Features], modality_mask: dict[str, jax.Array], *, train: bool
    ) -> jax.Array:
        embeddings = self.embed(features)
        present = {m: modality_mask[m].astype(jnp.float32)[:, None] for m in self.modalities}
        total = sum(embeddings[m] * present[m] for m in self.modalities)
        return total / jnp.maximum(sum(present.values()), 1.0)

    def aux_loss(
        self, features: dict[str, Features], modality_mask: dict[str, jax.Array]
    ) -> dict[str, jax.Array]:
        """{"contrastive": weight x mean pair loss over every pair of modalities}."""
        embeddings = self.embed(features)
        pairs = list(itertools.combinations(self.modalities, 2))
        if not pairs:
            return {"contrastive": jnp.zeros(())}
        losses = [
            self.pair_loss(embeddings[a], embeddings[b], modality_mask[a] & modality_mask[b])
            for a, b in pairs
        ]
        return {"contrastive": self.weight * sum(losses) / len(losses)}

    def pair_loss(self, a: jax.Array, b: jax.Array, valid: jax.Array) -> jax.Array:
        raise NotImplementedError


@FUSIONS.register("clip")
class CLIPHead(_TwoTower):
    """Two towers with CLIP's symmetric softmax contrastive loss (Radford et al. 2021).

    loss = (CE(t a bᵀ, I) + CE(t b aᵀ, I)) / 2 over the samples with both modalities, a and b unit
    embeddings, t = exp(log_scale) learned from 1/0.07 and capped at 100, as in the paper.

    Deviations from the paper: the projections have a bias (CLIP's have none), and the fused
    vector, the mean of the present modalities' embeddings, is this library's addition.
    """

    def __init__(self, dims: dict[str, int], cfg: _TwoTower.Config, *, rngs: nnx.Rngs):
        super().__init__(dims, cfg, rngs=rngs)
        self.log_scale = nnx.Param(jnp.log(jnp.asarray(1 / 0.07, jnp.float32)))

    def pair_loss(self, a: jax.Array, b: jax.Array, valid: jax.Array) -> jax.Array:
        """a, b [B, D] unit vectors; valid [B]: rows where both modalities are present."""
        scale = jnp.exp(jnp.minimum(self.log_scale[...], jnp.log(100.0)))  # CLIP's cap
        logits = scale * a @ b.T
        pair_ok = valid[:, None] & valid[None, :]
        logits = jnp.where(pair_ok, logits, -1e9)
        labels = jnp.arange(a.shape[0])
        per_row = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        per_col = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
        weights = valid.astype(a.dtype)
        return jnp.sum((per_row + per_col) * weights) / (2 * jnp.maximum(weights.sum(), 1.0))


@FUSIONS.register("siglip")
class SigLIPHead(_TwoTower):
    """Two towers with SigLIP's pairwise sigmoid loss (Zhai et al. 2023).

    loss = -Σ_ij log σ(s_ij (t a_i · b_j + c)) / n, s_ij = 1 on the diagonal and -1 elsewhere, over
    the n samples with both modalities; t = exp(log_scale) from 10 and c from -10, as in the paper.

    Deviations from the paper: the fused vector, the mean of the present modalities' embeddings,
    is this library's addition.
    """

    def __init__(self, dims: dict[str, int], cfg: _TwoTower.Config, *, rngs: nnx.Rngs):
        super().__init__(dims, cfg, rngs=rngs)
        self.log_scale = nnx.Param(jnp.log(jnp.asarray(10.0, jnp.float32)))
        self.bias = nnx.Param(jnp.asarray(-10.0, jnp.float32))

    def pair_loss(self, a: jax.Array, b: jax.Array, valid: jax.Array) -> jax.Array:
        """a, b [B, D] unit vectors; valid [B]: rows where both modalities are present."""
        logits = jnp.exp(self.log_scale[...]) * a @ b.T + self.bias[...]
        signs = 2 * jnp.eye(a.shape[0]) - 1
        pair_ok = (valid[:, None] & valid[None, :]).astype(a.dtype)
        loss = -jax.nn.log_sigmoid(signs * logits) * pair_ok
        return jnp.sum(loss) / jnp.maximum(valid.astype(a.dtype).sum(), 1.0)


def zero_shot_logits(
    model: nnx.Module,
    query: dict[str, jax.Array],
    prototypes: dict[str, jax.Array],
    prototype_labels: jax.Array,
    num_classes: int,
) -> jax.Array:
    """Classify `query` (one modality, [B, ...]) by cosine similarity to class prototypes.

    Each class's prototype is the normalised mean embedding of the `prototypes` samples (another
    modality, [N, ...]) with that label in `prototype_labels` [N]: e.g. digit images labelled by
    spoken examples alone. Needs a model whose fusion head is a two-tower head. -> [B, C].
    """
    (q_mod,), (p_mod,) = list(query), list(prototypes)
    q_features, _ = model.encode(query, train=False)
    p_features, _ = model.encode(prototypes, train=False)
    q = model.fusion.embed(q_features)[q_mod]
    p = model.fusion.embed(p_features)[p_mod]
    one_hot = jax.nn.one_hot(prototype_labels, num_classes, dtype=p.dtype)  # [N, C]
    centres = one_hot.T @ p
    centres = centres * jax.lax.rsqrt(jnp.sum(centres * centres, -1, keepdims=True) + 1e-12)
    return q @ centres.T
