"""Product and gating fusion heads against NumPy re-statements of their papers' formulas.

Each reference reads the head's parameters (randomised, so biases are not zero) and recomputes
the output in float64 from the published formula, one sample at a time, including samples with
one modality masked out (and, for the token-level nl_gate, padding tokens).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mmjax.models  # noqa: F401  (registration)
from mmjax.models.layers import Features
from mmjax.registry import FUSIONS

B = 3
DIMS = {"audio": 5, "image": 7}  # sorted: audio first
# Sample 0: both present; sample 1: image missing; sample 2: audio missing.
MASKS = {"audio": np.array([True, True, False]), "image": np.array([True, False, True])}
# Three tokens per sample; False marks a padding token.
TOKEN_MASKS = {
    "audio": np.array([[True, True, False], [True, True, True], [True, True, True]]),
    "image": np.array([[True, False, True], [True, True, True], [True, True, False]]),
}
EPS = 1e-6  # the bilinear_mfb head's guard inside its square root and L2 norm


def make_head(name: str, seed: int = 0, **config) -> nnx.Module:
    """The head in eval use (Config(**config)), every parameter redrawn from N(0, 0.3^2)."""
    cls = FUSIONS.get(name)
    head = cls(DIMS, cls.Config(**config), rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed + 1)
    params = nnx.state(head, nnx.Param)
    nnx.update(
        head,
        jax.tree.map(lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype), params),
    )
    return head


class Inputs(NamedTuple):
    """The reference's float64 view of the head's inputs: {modality: array}."""

    pooled: dict[str, np.ndarray]  # [B, D_m]
    tokens: dict[str, np.ndarray]  # [B, T, D_m]


def make_inputs(seed: int = 0) -> tuple[dict[str, Features], Inputs, dict[str, jax.Array]]:
    """(features for the head, the same inputs in float64 for the reference, modality masks)."""
    rng = np.random.default_rng(seed + 100)
    features = {}
    for m, d in DIMS.items():
        tokens = jnp.asarray(rng.standard_normal((B, 3, d)), jnp.float32)
        pooled = jnp.asarray(rng.standard_normal((B, d)), jnp.float32)
        features[m] = Features(tokens, jnp.asarray(TOKEN_MASKS[m]), pooled)
    # The float32 values themselves, so head and reference see the same inputs.
    inputs = Inputs(
        {m: np.asarray(features[m].pooled, np.float64) for m in DIMS},
        {m: np.asarray(features[m].tokens, np.float64) for m in DIMS},
    )
    masks = {m: jnp.asarray(v) for m, v in MASKS.items()}
    return features, inputs, masks


def p(x) -> np.ndarray:
    """A parameter as a float64 NumPy array."""
    return np.asarray(x[...], np.float64)


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (Hendrycks & Gimpel 2016), as nnx.gelu's default."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def linear(layer, x: np.ndarray) -> np.ndarray:
    return x @ p(layer.kernel) + p(layer.bias)


def mlp2(mlp, x: np.ndarray) -> np.ndarray:
    """Two-layer MLP (Linear, GELU, Linear) followed by the heads' output GELU; no dropout."""
    first, second = mlp.layers
    return gelu(linear(second, gelu(linear(first, x))))


def assert_close(out: jax.Array, ref: np.ndarray) -> None:
    """Equal within 1e-5 relative to the reference's scale."""
    out = np.asarray(out, np.float64)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def ref_tensor_fusion(head, inputs: Inputs, present) -> np.ndarray:
    """TFN: MLP(vec([1; z_a] ⊗ [1; z_i])), z_m = P_m x_m; a missing modality gives [1; 0]."""
    z = inputs.pooled
    rows = []
    for b in range(B):
        vectors = []
        for m in ("audio", "image"):
            zm = (
                linear(head.proj[m], z[m][b])
                if present[m][b]
                else np.zeros(head.proj[m].out_features)
            )
            vectors.append(np.concatenate([[1.0], zm]))
        rows.append(np.outer(vectors[0], vectors[1]).reshape(-1))
    return mlp2(head.mlp, np.stack(rows))


def ref_low_rank_fusion(head, inputs: Inputs, present) -> np.ndarray:
    """LMF: h = Σ_i Π_m ([x_m; 1] · W_m^(i)) + b; a missing modality enters as [0; 1]."""
    z = inputs.pooled
    out = np.zeros((B, head.dim))
    for b in range(B):
        for i in range(head.factors["audio"].shape[0]):
            term = np.ones(head.dim)
            for m in ("audio", "image"):
                xm = z[m][b] if present[m][b] else np.zeros(DIMS[m])
                term = term * (np.append(xm, 1.0) @ p(head.factors[m])[i])
            out[b] += term
    return out + p(head.bias)


def ref_gmu(head, inputs: Inputs, present) -> np.ndarray:
    """GMU, two modalities: h = z ∘ h_a + (1 - z) ∘ h_i, h_m = tanh(W_m x_m) and one gate per
    hidden unit, z = σ(W_z [x_a; x_i]).

    A missing modality's input to the gate is zero and the whole weight goes to the other one.
    """
    out = np.zeros((B, head.dim))
    for b in range(B):
        xa = inputs.pooled["audio"][b] if present["audio"][b] else np.zeros(DIMS["audio"])
        xi = inputs.pooled["image"][b] if present["image"][b] else np.zeros(DIMS["image"])
        ha, hi = np.tanh(linear(head.proj["audio"], xa)), np.tanh(linear(head.proj["image"], xi))
        g = 1.0 / (1.0 + np.exp(-linear(head.gate, np.concatenate([xa, xi]))))
        if not present["image"][b]:
            g = np.ones(head.dim)
        elif not present["audio"][b]:
            g = np.zeros(head.dim)
        out[b] = g * ha + (1.0 - g) * hi
    return out


def ref_bilinear_mfb(head, inputs: Inputs, present) -> np.ndarray:
    """MFB: y = SumPool(U^T x ∘ V^T q, k), y <- sign(y)|y|^(1/2), y <- y / ||y||.

    A missing modality is left out of the product (the present one's projection alone).
    """
    z = inputs.pooled
    k, o = head.factor, head.dim
    out = np.zeros((B, o))
    for b in range(B):
        joint = np.ones(k * o)
        for m in ("audio", "image"):
            if present[m][b]:
                joint = joint * linear(head.proj[m], z[m][b])
        y = joint.reshape(o, k).sum(axis=1)
        y = y / np.sqrt(np.abs(y) + EPS)  # sign(y) sqrt(|y|), with the head's guard
        out[b] = y / np.sqrt(np.sum(y**2) + EPS)
    return out


def ref_film(head, inputs: Inputs, present) -> np.ndarray:
    """FiLM of x_a by x_i: MLP(γ ∘ x_a + β), [γ - 1; β] = W x_i + b; identity if x_i is missing.

    A missing audio vector is replaced by the head's learned null vector.
    """
    z = inputs.pooled
    rows = []
    for b in range(B):
        x = z["audio"][b] if present["audio"][b] else p(head.null)
        gamma, beta = np.ones_like(x), np.zeros_like(x)
        if present["image"][b]:
            delta = linear(head.film["image"], z["image"][b])
            gamma, beta = 1.0 + delta[: x.size], delta[x.size :]
        rows.append(gamma * x + beta)
    return mlp2(head.mlp, np.stack(rows))


def ref_multiplicative(head, inputs: Inputs, present) -> np.ndarray:
    """MI (Jayakumar et al. 2020): f(x, z) = zᵀ W x + zᵀ U + V x + b, W a full [D_z, D_x, D]
    tensor, x = x_a (or P x_a + c with `project`) and z = x_i; a missing input is 0.
    """
    mi = head.steps["image"]
    out = np.zeros((B, head.dim))
    for b in range(B):
        xa = inputs.pooled["audio"][b]
        if head.proj is not None:
            xa = linear(head.proj, xa)
        if not present["audio"][b]:
            xa = np.zeros_like(xa)
        zi = inputs.pooled["image"][b] if present["image"][b] else np.zeros(DIMS["image"])
        bilinear = np.einsum("i,ijo,j->o", zi, p(mi.w), xa)
        out[b] = bilinear + zi @ p(mi.u.kernel) + linear(mi.v, xa)
    return out


def ref_nl_gate(head, inputs: Inputs, present) -> np.ndarray:
    """NL-gate (Wang et al. 2020; MultiBench's NLgate), audio queries, image keys and values:
    y_t = q_t + Σ_s softmax_s(q_t · k_s) v_s, q = Q x_a, k = K x_i, v = V x_i, no 1/sqrt(d);
    out = mean of y over the valid audio tokens.

    Image padding tokens or a missing image are no keys (no keys: y = q); a missing audio is
    replaced by the head's null query at every position, all of them pooled.
    """
    out = np.zeros((B, head.dim))
    for b in range(B):
        tokens = TOKEN_MASKS["audio"][b]
        if present["audio"][b]:
            q = linear(head.q, inputs.tokens["audio"][b][tokens])
        else:
            q = np.tile(p(head.null), (tokens.size, 1))
        y = q
        keep = TOKEN_MASKS["image"][b] & present["image"][b]
        if keep.any():
            context = inputs.tokens["image"][b][keep]
            k, v = linear(head.k["image"], context), linear(head.v["image"], context)
            scores = q @ k.T
            weights = np.exp(scores - scores.max(axis=1, keepdims=True))
            y = q + (weights / weights.sum(axis=1, keepdims=True)) @ v
        out[b] = y.mean(axis=0)
    return out


# id: (registered name, Config overrides, reference).
REFERENCES = {
    "tensor_fusion": ("tensor_fusion", {}, ref_tensor_fusion),
    "low_rank_fusion": ("low_rank_fusion", {}, ref_low_rank_fusion),
    "multiplicative": ("multiplicative", {}, ref_multiplicative),
    "multiplicative_project": ("multiplicative", {"project": 3}, ref_multiplicative),
    "gmu": ("gmu", {}, ref_gmu),
    "nl_gate": ("nl_gate", {}, ref_nl_gate),
    "bilinear_mfb": ("bilinear_mfb", {}, ref_bilinear_mfb),
    "film": ("film", {}, ref_film),
}


@pytest.mark.parametrize("case", sorted(REFERENCES))
def test_fusion_matches_numpy_reference(case):
    name, config, reference = REFERENCES[case]
    head = make_head(name, **config)
    features, inputs, masks = make_inputs()
    out = head(features, masks, train=False)
    assert_close(out, reference(head, inputs, MASKS))


PRODUCT_AND_GATE_HEADS = [
    "tensor_fusion",
    "low_rank_fusion",
    "multiplicative",
    "bilinear_mfb",
    "gmu",
    "nl_gate",
    "film",
    "attention_sum",
    "deep_sets",
]


@pytest.mark.parametrize("name", PRODUCT_AND_GATE_HEADS)
def test_fusion_four_modalities_nan_masked_and_all_missing(name):
    """Four modalities; missing entries are NaN yet cannot reach the output or the gradient;
    a sample with every modality missing gives a finite output."""
    dims = {"image": 6, "audio": 5, "text": 4, "video": 3}
    cls = FUSIONS.get(name)
    head = cls(dims, cls.Config(), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    masks = {
        "image": jnp.array([True, True, False, False]),
        "audio": jnp.array([True, False, True, False]),
        "text": jnp.array([True, True, True, False]),
        "video": jnp.array([False, True, False, False]),
    }
    clean, poisoned = {}, {}
    for m, d in dims.items():
        tokens = jnp.asarray(rng.standard_normal((4, 3, d)), jnp.float32)
        token_mask = jnp.ones((4, 3), bool).at[0, 2].set(False)
        clean[m] = Features(tokens, token_mask, tokens.mean(1))
        bad = jnp.where(masks[m][:, None, None], tokens, jnp.nan)
        poisoned[m] = Features(
            bad, token_mask, jnp.where(masks[m][:, None], tokens.mean(1), jnp.nan)
        )
    out = head(clean, masks, train=False)
    assert out.shape == (4, head.dim)
    np.testing.assert_allclose(head(poisoned, masks, train=False), out, atol=1e-6)
    grads = nnx.grad(lambda f: f(poisoned, masks, train=True).sum())(head)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
