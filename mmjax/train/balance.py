"""Modality balancing: OGM-GE inside the jitted train step, and the loss weights of
Gradient-Blending (below; the loop's updater is `mmjax.train.blend`).

OGM-GE, on-the-fly gradient modulation with generalisation enhancement (Peng et al.,
"Balanced Multimodal Learning via On-the-fly Gradient Modulation", CVPR 2022, whose Eq. 10 is
the coefficient below; the authors' code: GeWu-Lab/OGM-GE_CVPR2022).

Each step, the discrepancy ratio of modality u is rho_u = s_u / (mean of s_v over the other
modalities), with s_u the mean softmax probability of the true class that the model gives
from u alone. The gradient of u's encoder becomes k_u g + h, with k_u = 1 - tanh(alpha rho_u)
when rho_u > 1 (u dominates) and 1 otherwise, and h ~ N(0, std(g)^2) drawn per parameter
tensor. Modulation runs for the first `until` steps, as the authors' code modulates the first
half of training by default.

Deviations from the paper (and the authors' code):
- s_u comes from the model's own prediction with every other modality masked out, so any
  fusion head can be balanced; the paper splits the linear classifier of concatenation
  (or sum) fusion into per-modality halves, which only those heads have.
- s_u averages over the samples in which u is present (the paper sums over the batch, where
  every modality is always present: the same ratio).
- For more than two modalities, rho_u compares u with the mean of the others (the paper has
  two: rho_a = s_a / s_v).
- The noise and the coefficient apply to every parameter of u's encoder; the authors' code
  modulates only the 4-D convolution kernels of its ResNet-18 encoders.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.config import ExperimentConfig
from mmjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class OGMGE:
    """OGM-GE's settings: alpha, modulation for steps [0, until), noise seeded by `seed`."""

    alpha: float
    until: int
    seed: int

    def noise_key(self, step: jax.Array) -> jax.Array:
        """The noise key of optimizer step `step`: the same on a resumed run."""
        return jax.random.fold_in(jax.random.key(self.seed), step)


def require_two_modalities(exp: ExperimentConfig) -> None:
    if len(exp.model.modalities) < 2:
        raise ConfigError(
            f"train.balance={exp.train.balance} balances modalities; this model has only "
            f"{', '.join(exp.model.modalities)}"
        )


def ogm_settings(exp: ExperimentConfig) -> OGMGE | None:
    """OGM-GE's settings when `train.balance` asks for it."""
    if exp.train.balance != "ogm_ge":
        return None
    require_two_modalities(exp)
    until = round(exp.train.balance_until * exp.train.steps)
    return OGMGE(exp.train.balance_alpha, until, exp.train.seed)


def ogm_coefficients(
    unimodal_logits: dict[str, jax.Array],
    labels: jax.Array,
    masks: dict[str, jax.Array],
    alpha: float,
) -> dict[str, jax.Array]:
    """{m: k_m} from each modality's logits alone [B, C], the labels [B] and presence [B]."""
    scores = {}
    for m, logits in unimodal_logits.items():
        p_true = jnp.take_along_axis(jax.nn.softmax(logits.astype(jnp.float32)), labels[:, None], 1)
        present = masks[m].astype(jnp.float32)
        scores[m] = jnp.sum(p_true[:, 0] * present) / jnp.maximum(jnp.sum(present), 1.0)
    coefficients = {}
    for m, score in scores.items():
        others = jnp.mean(jnp.stack([s for u, s in scores.items() if u != m]))
        ratio = score / jnp.maximum(others, 1e-12)
        coefficients[m] = jnp.where(ratio > 1, 1 - jnp.tanh(alpha * ratio), 1.0)
    return coefficients


def modulate(grads: nnx.State, coefficients: dict[str, jax.Array], key: jax.Array) -> nnx.State:
    """`grads` with each encoder m's gradient g replaced by k_m g + N(0, std(g)^2) (the std of
    each tensor's unmodulated gradient); every other gradient as it was."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(grads)
    out = []
    for i, (path, g) in enumerate(leaves):
        names = [getattr(p, "key", getattr(p, "name", None)) for p in path[:2]]
        if names[0] != "encoders" or names[1] not in coefficients:
            out.append(g)
            continue
        noise = jax.random.normal(jax.random.fold_in(key, i), g.shape, g.dtype)
        out.append(coefficients[names[1]] * g + noise * (jnp.std(g) + 1e-8))
    return jax.tree_util.tree_unflatten(treedef, out)


# Gradient-Blending (Wang, Tran & Feiszli, "What Makes Training Multi-modal Classification
# Networks Hard?", CVPR 2020; MultiBench's training_structures/gradient_blend.py). Each head k
# (the fused one, then one per modality on its encoder's pooled features) has a loss L_k; the
# train loss is sum_k w_k L_k with w_k = (G_k / O_k^2) / Z: G_k = L^V_k(N) - L^V_k(N+n), the
# val loss the head gained over the last n steps, and O_k = (L^V_k - L^T_k)(N+n) -
# (L^V_k - L^T_k)(N), how much more it overfits.
#
# Deviations from the paper: the losses are measured on the jointly trained model's own heads
# at two points of its training (online, at no extra cost), where the paper trains a copy of
# each unimodal model and of the multimodal one for n epochs to measure them; the val set is
# the dataset's val split, not a held-out share of train. A head whose val loss did not fall
# (G_k <= 0) gets weight 0; O_k is floored at 1e-4, as MultiBench floors a negative O; when no
# head's val loss fell, the weights stay as they were.

MIN_OVERFITTING = 1e-4


def gradient_blend_weights(
    before: np.ndarray, after: np.ndarray, current: np.ndarray
) -> np.ndarray:
    """New loss weights [K] from the heads' (train, val) losses [2, K] measured `before` and
    `after` an interval; `current` [K] where no head's val loss fell."""
    gained = before[1] - after[1]
    overfitting = (after[1] - after[0]) - (before[1] - before[0])
    raw = np.maximum(gained, 0.0) / np.maximum(overfitting, MIN_OVERFITTING) ** 2
    if not np.isfinite(raw).all() or raw.sum() <= 0:
        return np.asarray(current, np.float64)
    return raw / raw.sum()
