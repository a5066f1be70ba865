"""Multiplicative and product fusion heads: pooled {modality: [B, D_m]} -> fused [B, D].

Every head follows the contract of `mmjax.models.fusion`: a modality masked out for a sample has
no influence on that sample's output, and a sample with every modality missing stays finite.
Features of a missing modality are replaced by zeros before any arithmetic, so even NaN there
cannot leak into the output or its gradient. Per head (z_m = pooled features of modality m):

- tensor_fusion: v_m = [1, P_m z_m]; fused = MLP(flatten(v_0 ⊗ v_1 ⊗ ...)). Missing: v_m is
  [1, 0, ..., 0], so only its constant survives.
- low_rank_fusion: out = Σ_r Π_m ([z_m, 1] @ W_m[r]) + b. Missing: input [0..0, 1], so the factor
  is the constant row W_m[r, -1].
- multiplicative: h = A z_0 + c, then for each later modality h <- (I + W_m z_m) h + V_m z_m (the
  MI layer with a generated weight matrix, folded over modalities). Missing: z_m = 0, so that
  step is exactly the identity (and a missing first modality leaves h = c).
- bilinear_mfb: e = Π_{m present} (U_m z_m + b_m) in R^{k·o}, summed over groups of k, signed square
  root, L2 norm. Missing: the modality is left out of the product (its factor is 1), so the head
  falls back to the present modalities' projections; with none present e = 0.
"""

import dataclasses

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.models.layers import MLP, Features
from mmjax.registry import FUSIONS

# Keeps the signed square root and the L2 norm differentiable (and finite) at zero.
_EPS = 1e-6


def _present_pooled(
    features: dict[str, Features], modality_mask: dict[str, jax.Array], m: str
) -> tuple[jax.Array, jax.Array]:
    """(present [B, 1] bool, pooled [B, D_m] with zeros where modality m is missing)."""
    present = modality_mask[m][:, None]
    return present, jnp.where(present, features[m].pooled, 0.0)


@FUSIONS.register("tensor_fusion")
class TensorFusion(nnx.Module):
    """Tensor fusion: MLP over the outer product of [1, z_m] vectors (Zadeh et al. 2017, TFN)."""

    @dataclasses.dataclass(frozen=True)
    class Config:
        proj_dim: int = 8
        hidden: int = 64
        dropout: float = 0.1

    def __init__(self, dims: dict[str, int], cfg: Config, *, rngs: nnx.Rngs):
        self.modalities = tuple(sorted(dims))
        self.proj = nnx.Dict(
            {m: nnx.Linear(dims[m], cfg.proj_dim, rngs=rngs) for m in self.modalities}
        )
        width = (cfg.proj_dim + 1) ** len(self.modalities)
        self.mlp = MLP((width, cfg.hidden, cfg.hidden), dropout=cfg.dropout, rngs=rngs)
        self.dim = cfg.hidden

    def __call__(
        self, features: dict[str, Features], modality_mask: dict[str, jax.Array], *, train: bool
    ) -> jax.Array:
        fused = None
        for m in self.modalities:
            present, z = _present_pooled(features, modality_mask, m)
            z = jnp.where(present, self.proj[m](z), 0.0)
            v = jnp.concatenate([jnp.ones_like(z[:, :1]), z], axis=-1)  # missing: [1, 0, ..., 0]
            if fused is None:
                fused = v
            else:
                outer = einops.einsum(fused, v, "b i, b j -> b i j")
                fused = einops.rearrange(outer, "b i j -> b (i j)")
        return nnx.gelu(self.mlp(fused, train=train))


@FUSIONS.register("low_rank_fusion")
class LowRankFusion(nnx.Module):
    """Low-rank multimodal fusion: rank-r modality factors of the TFN tensor (Liu et al. 2018)."""

    @dataclasses.dataclass(frozen=True)
    class Config:
        rank: int = 4
        hidden: int = 64

    def __init__(self, dims: dict[str, int], cfg: Config, *, rngs: nnx.Rngs):
        self.modalities = tuple(sorted(dims))
        init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=1, out_axis=2)
        self.factors = nnx.Dict(
            {
                m: nnx.Param(init(rngs.params(), (cfg.rank, dims[m] + 1, cfg.hidden)))
                for m in self.modalities
            }
        )
        self.bias = nnx.Param(jnp.zeros((cfg.hidden,)))
        self.dim = cfg.hidden

    def __call__(
        self, features: dict[str, Features], modality_mask: dict[str, jax.Array], *, train: bool
    ) -> jax.Array:
        product = None
        for m in self.modalities:
            _, z = _present_pooled(features, modality_mask, m)
            v = jnp.concatenate([z, jnp.ones_like(z[:, :1])], axis=-1)  # missing: [0, ..., 0, 1]
            factor = einops.einsum(v, self.factors[m][...], "b i, r i o -> b r o")
            product = factor if product is None else product * factor
        return product.sum(axis=1) + self.bias[...]


@FUSIONS.register("multiplicative")
class Multiplicative(nnx.Module):
    """Multiplicative interactions, folded over modalities (Jayakumar et al. 2020, MI)."""

    @dataclasses.dataclass(frozen=True)
    class Config:
        dim: int = 32

    def __init__(self, dims: dict[str, int], cfg: Config, *, rngs: nnx.Rngs):
        self.modalities = tuple(sorted(dims))
        first, *rest = self.modalities
        self.base = nnx.Linear(dims[first], cfg.dim, rngs=rngs)
        # W_m [D_m, D, D]: z_m generates the matrix W_m z_m that multiplies the state h.
        init = nnx.initializers.variance_scaling(
            1.0, "fan_in", "normal", in_axis=(0, 2), out_axis=1
        )
        self.bilinear = nnx.Dict(
            {m: nnx.Param(init(rngs.params(), (dims[m], cfg.dim, cfg.dim))) for m in rest}
        )
        self.linear = nnx.Dict(
            {m: nnx.Linear(dims[m], cfg.dim, use_bias=False, rngs=rngs) for m in rest}
        )
        self.dim = cfg.dim

    def __call__(
        self, features: dict[str, Features], modality_mask: dict[str, jax.Array], *, train: bool
    ) -> jax.Array:
        first, *rest = self.modalities
        _, z = _present_pooled(features, modality_mask, first)
        h = self.base(z)  # missing first modality: the bias alone
        for m in rest:
            _, z = _present_pooled(features, modality_mask, m)
            # h <- (I + W_m z_m) h + V_m z_m; z_m = 0 (missing) makes this the identity.
            interaction = einops.einsum(z, self.bilinear[m][...], h, "b i, i o k, b k -> b o")
            h = h + interaction + self.linear[m](z)
        return h


@FUSIONS.register("bilinear_mfb")
class BilinearMFB(nnx.Module):
    """Multimodal factorised bilinear pooling, folded over modalities (Yu et al. 2017, MFB)."""

    @dataclasses.dataclass(frozen=True)
    class Config:
        out: int = 64
        factor: int = 5
        dropout: float = 0.1

    def __init__(self, dims: dict[str, int], cfg: Config, *, rngs: nnx.Rngs):
        self.modalities = tuple(sorted(dims))
        self.factor = cfg.factor
        self.proj = nnx.Dict(
            {m: nnx.Linear(dims[m], cfg.out * cfg.factor, rngs=rngs) for m in self.modalities}
        )
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.dim = cfg.out

    def __call__(
        self, features: dict[str, Features], modality_mask: dict[str, jax.Array], *, train: bool
    ) -> jax.Array:
        joint, any_present = None, None
        for m in self.modalities:
            present, z = _present_pooled(features, modality_mask, m)
            p = jnp.where(present, self.proj[m](z), 1.0)  # missing: left out of the product
            joint = p if joint is None else joint * p
            any_present = present if any_present is None else any_present | present
        joint = jnp.where(any_present, joint, 0.0)  # nothing present: a zero vector
        joint = self.dropout(joint, deterministic=not train)
        pooled = einops.reduce(joint, "b (o k) -> b o", "sum", k=self.factor)
        power = pooled * jax.lax.rsqrt(jnp.abs(pooled) + _EPS)  # ≈ sign(x) sqrt(|x|)
        return power * jax.lax.rsqrt(jnp.sum(power**2, axis=-1, keepdims=True) + _EPS)
