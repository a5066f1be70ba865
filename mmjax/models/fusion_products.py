"""Multiplicative and product fusion heads: pooled {modality: [B, D_m]} -> fused [B, D].

Every head follows the contract of `mmjax.models.fusion`: a modality masked out for a sample has
no influence on that sample's output, and a sample with every modality missing stays finite.
Features of a missing modality are replaced by zeros before any arithmetic, so even NaN there
cannot leak into the output or its gradient. Per head (z_m = pooled features of modality m):

- tensor_fusion: v_m = [1, P_m z_m]; fused = MLP(flatten(v_0 ⊗ v_1 ⊗ ...)). Missing: v_m is
  [1, 0, ..., 0], so only its constant survives.
- low_rank_fusion: out = Σ_r Π_m ([z_m, 1] @ W_m[r]) + b. Missing: input [0..0, 1], so the factor
  is the constant row W_m[r, -1].
- multiplicative: MI(x, z) = zᵀ W x + zᵀ U + V x + b with W a full tensor; h = MI(z_0, z_1), then
  h <- MI_m(h, z_m) for each later modality. Missing: its input is 0, so MI(x, 0) = V x + b and
  MI(0, z) = zᵀ U + b, the affine terms of the other input alone.
- bilinear_mfb: e = Π_{m present} (U_m z_m + b_m) in R^{k·o}, summed over groups of k, signed square
  root, L2 norm. Missing: the modality is left out of the product (its factor is 1), so the head
  falls back to the present modalities' projections; with none present e = 0.
"""

import dataclasses

import einops
import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

from mmjax.errors import ConfigError
from mmjax.models.layers import MLP, Features, present_pooled
from mmjax.registry import FUSIONS

# Keeps the signed square root and the L2 norm differentiable (and finite) at zero.
_EPS = 1e-6


@FUSIONS.register("tensor_fusion")
class TensorFusion(nnx.Module):
    """Tensor fusion: MLP over the outer product of [1, z_m] vectors (Zadeh et al. 2017, TFN).

    Each modality is projected, P_m z_m [B, proj_dim]: the last layer of TFN's modality embedding
    subnetwork, whose earlier layers are the encoder. The tensor fusion layer is the outer product
    of the [1; P_m z_m] vectors, flattened to [B, (proj_dim + 1)^M]. The MLP (Linear, GELU,
    dropout, Linear, GELU) is the sentiment inference subnetwork without its output layer, which
    is the model's classifier.

    Deviations from the paper: GELU where the paper uses ReLU. One `proj_dim` (8) for every
    modality, where TFN's embeddings are 32 (audio, visual) and 128 (language) wide. Dropout acts
    between the MLP's layers; the authors' code drops the fused tensor. Any number of modalities,
    not the paper's three.
    """

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
            present, z = present_pooled(features, modality_mask, m)
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
    """Low-rank multimodal fusion: rank-r modality factors of the TFN tensor (Liu et al. 2018).

    out = Σ_{i<r} Π_m ([z_m; 1] · W_m^(i)) + b [B, hidden], the TFN weight tensor in rank-r CP
    form applied without building the tensor; z_m are the encoders' pooled features, the output
    of LMF's modality subnetworks.

    Deviations from the paper: none. (The authors' code also weights the r terms by learned
    scalars; the paper sums them, as here.)
    """

    @dataclasses.dataclass(frozen=True)
    class Config:
        rank: int = 4
        hidden: int = 64

    def __init__(self, dims: dict[str, int], cfg: Config, *, rngs: nnx.Rngs):
        self.modalities = tuple(sorted(dims))
        # As on flax's layers: `dtype` (None: the inputs' and factors' promoted dtype) is the
        # compute dtype, which `train.compute_dtype` sets (train/step.py: _compute_in).
        self.dtype: jnp.dtype | None = None
        self.param_dtype = jnp.float32
        init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=1, out_axis=2)
        self.factors = nnx.Dict(
            {
                m: nnx.Param(
                    init(rngs.params(), (cfg.rank, dims[m] + 1, cfg.hidden), self.param_dtype)
                )
                for m in self.modalities
            }
        )
        self.bias = nnx.Param(jnp.zeros((cfg.hidden,), self.param_dtype))
        self.dim = cfg.hidden

    def __call__(
        self, features: dict[str, Features], modality_mask: dict[str, jax.Array], *, train: bool
    ) -> jax.Array:
        product = None
        for m in self.modalities:
            _, z = present_pooled(features, modality_mask, m)
            v = jnp.concatenate([z, jnp.ones_like(z[:, :1])], axis=-1)  # missing: [0, ..., 0, 1]
            v, weights = promote_dtype((v, self.factors[m][...]), dtype=self.dtype)
            factor = einops.einsum(v, weights, "b i, r i o -> b r o")
            product = factor if product is None else product * factor
        product, bias = promote_dtype((product, self.bias[...]), dtype=self.dtype)
        return product.sum(axis=1) + bias


class _MI(nnx.Module):
    """One multiplicative-interaction layer: x [B, D_x], z [B, D_z] -> [B, out],
    f(x, z) = zᵀ W x + zᵀ U + V x + b with W a full [D_z, D_x, out] tensor."""

    def __init__(self, x_dim: int, z_dim: int, out: int, *, rngs: nnx.Rngs):
        self.dtype: jnp.dtype | None = None  # the compute dtype, as in LowRankFusion
        self.param_dtype = jnp.float32
        init = nnx.initializers.variance_scaling(
            1.0, "fan_in", "normal", in_axis=(0, 1), out_axis=2
        )
        self.w = nnx.Param(init(rngs.params(), (z_dim, x_dim, out), self.param_dtype))
        self.u = nnx.Linear(z_dim, out, use_bias=False, rngs=rngs)
        self.v = nnx.Linear(x_dim, out, rngs=rngs)  # its bias is b

    def __call__(self, x: jax.Array, z: jax.Array) -> jax.Array:
        zc, w, xc = promote_dtype((z, self.w[...], x), dtype=self.dtype)
        bilinear = einops.einsum(zc, w, xc, "b i, i j o, b j -> b o")
        return bilinear + self.u(z) + self.v(x)


@FUSIONS.register("multiplicative")
class Multiplicative(nnx.Module):
    """Multiplicative interactions, folded over modalities (Jayakumar et al. 2020, MI).

    MI(x, z) = zᵀ W x + zᵀ U + V x + b, W a full [D_z, D_x, dim] tensor (MultiBench's
    MultiplicativeInteractions2Modal with output="matrix"). h = MI(z_0, z_1) [B, dim], then
    h <- MI_m(h, z_m) for each later modality, with a full [D_m, dim, dim] tensor. The first
    tensor has D_0·D_1·dim parameters: `project=k` > 0 projects z_0 to k features first
    (D_0·k + k + k·D_1·dim), a tensor of rank at most k in z_0 for wide encoders. A lone
    modality is projected to `dim` (there is nothing to interact with).

    Deviations from the paper: none with `project=0`, the default; `project=k` limits the rank.
    The paper fuses two inputs; more modalities fold in one MI layer each.
    """

    @dataclasses.dataclass(frozen=True)
    class Config:
        dim: int = 32
        project: int = 0  # 0: the paper's full tensor on z_0; k > 0: project z_0 to k first

    def __init__(self, dims: dict[str, int], cfg: Config, *, rngs: nnx.Rngs):
        if cfg.project < 0:
            raise ConfigError(f"multiplicative.project must be >= 0, got {cfg.project}")
        self.modalities = tuple(sorted(dims))
        first, *rest = self.modalities
        width = cfg.project if rest else cfg.dim
        self.proj = nnx.Linear(dims[first], width, rngs=rngs) if width else None
        widths = [width or dims[first]] + [cfg.dim] * (len(rest) - 1)  # h's width at each step
        self.steps = nnx.Dict(
            {m: _MI(w, dims[m], cfg.dim, rngs=rngs) for m, w in zip(rest, widths)}
        )
        self.dim = cfg.dim

    def __call__(
        self, features: dict[str, Features], modality_mask: dict[str, jax.Array], *, train: bool
    ) -> jax.Array:
        first, *rest = self.modalities
        present, h = present_pooled(features, modality_mask, first)
        if self.proj is not None:
            h = jnp.where(present, self.proj(h), 0.0)  # missing: 0, as without the projection
        for m in rest:
            h = self.steps[m](h, present_pooled(features, modality_mask, m)[1])
        return h


@FUSIONS.register("bilinear_mfb")
class BilinearMFB(nnx.Module):
    """Multimodal factorised bilinear pooling, folded over modalities (Yu et al. 2017, MFB).

    e = Π_m (U_m z_m + b_m) [B, k·o] -> dropout -> sum pooling over groups of k [B, o] -> signed
    square root -> L2 normalisation.

    Deviations from the paper: the paper fuses two inputs (image and question); with more, the
    product takes every modality's projection.
    """

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
            present, z = present_pooled(features, modality_mask, m)
            p = jnp.where(present, self.proj[m](z), 1.0)  # missing: left out of the product
            joint = p if joint is None else joint * p
            any_present = present if any_present is None else any_present | present
        joint = jnp.where(any_present, joint, 0.0)  # nothing present: a zero vector
        joint = self.dropout(joint, deterministic=not train)
        pooled = einops.reduce(joint, "b (o k) -> b o", "sum", k=self.factor)
        power = pooled * jax.lax.rsqrt(jnp.abs(pooled) + _EPS)  # ≈ sign(x) sqrt(|x|)
        return power * jax.lax.rsqrt(jnp.sum(power**2, axis=-1, keepdims=True) + _EPS)
