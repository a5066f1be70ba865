"""Task heads on top of a fused vector [B, D]."""

import jax
from flax import nnx


class Classifier(nnx.Module):
    """Linear classifier: fused [B, D] -> logits [B, num_classes]."""

    def __init__(self, dim: int, num_classes: int, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(dim, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear(x)
