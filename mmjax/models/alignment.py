"""Adversarial modality alignment: a loss term usable with any fusion head."""

from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mmjax.models.layers import MLP, Features


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def reverse_gradient(x: jax.Array, scale: float) -> jax.Array:
    """Identity forward; gradient multiplied by -scale backward (Ganin & Lempitsky 2015)."""
    return x


def _reverse_fwd(x: jax.Array, scale: float) -> tuple[jax.Array, None]:
    return x, None


def _reverse_bwd(scale: float, _: None, g: jax.Array) -> tuple[jax.Array]:
    return (-scale * g,)


reverse_gradient.defvjp(_reverse_fwd, _reverse_bwd)


class ModalityDiscriminator(nnx.Module):
    """A discriminator learns which modality a projected pooled feature came from, while the
    gradient-reversal layer trains the encoders (and projections) to make modalities
    indistinguishable in the shared space. Returns `weight` x the mean cross-entropy over the
    present (sample, modality) pairs; missing modalities contribute nothing."""

    def __init__(self, dims: dict[str, int], *, weight: float, hidden: int = 64, rngs: nnx.Rngs):
        self.modalities = tuple(sorted(dims))
        self.proj = nnx.Dict({m: nnx.Linear(dims[m], hidden, rngs=rngs) for m in self.modalities})
        self.classify = MLP((hidden, hidden, len(self.modalities)), rngs=rngs)
        self.weight = weight

    def __call__(self, features: dict[str, Features], masks: dict[str, jax.Array]) -> jax.Array:
        total, count = 0.0, 0.0
        for i, m in enumerate(self.modalities):
            shared = self.proj[m](features[m].pooled)
            logits = self.classify(reverse_gradient(shared, 1.0), train=True)
            labels = jnp.full(logits.shape[:1], i)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            present = masks[m].astype(ce.dtype)
            total, count = total + jnp.sum(ce * present), count + jnp.sum(present)
        return self.weight * total / jnp.maximum(count, 1.0)
