"""Gradient-Blending in the train loop: every `train.balance_every` steps, measure each head's
train and val loss and set the loss weights the jitted step reads (`mmjax.train.balance`)."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.compile_options import model_compiler_options
from mmjax.config import ExperimentConfig
from mmjax.errors import ConfigError
from mmjax.parallel import batch_sharded, replicated
from mmjax.train.balance import gradient_blend_weights, require_two_modalities
from mmjax.train.probe_batches import PROBE_BATCHES, probe_batches


def _head_losses(
    graphdef: nnx.GraphDef, shardings: nnx.State, mesh: jax.sharding.Mesh
) -> Callable[[nnx.State, dict, jax.Array], jax.Array]:
    """(state, batch, valid [B]) -> the heads' mean losses [1 + M], in inference mode."""

    def losses(state: nnx.State, batch: dict, valid: jax.Array) -> jax.Array:
        model, _ = nnx.merge(graphdef, state)
        inputs = {k: v for k, v in batch.items() if k != "label"}
        features, masks = model.encode(inputs, train=False)
        logits, _ = model.fuse(inputs, features, masks, train=False)
        return model.head_losses(features, masks, logits.astype(jnp.float32), batch["label"], valid)

    return jax.jit(
        losses,
        in_shardings=(shardings, batch_sharded(mesh), batch_sharded(mesh)),
        out_shardings=replicated(mesh),
        compiler_options=model_compiler_options(),
    )


class GradientBlend:
    """`update(state)` -> (state with new loss weights and history, metrics)."""

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        shardings: nnx.State,
        exp: ExperimentConfig,
        mesh: jax.sharding.Mesh,
    ):
        self.graphdef, self.modalities = graphdef, exp.model.modalities
        self._losses = _head_losses(graphdef, shardings, mesh)
        self._probes = {
            split: probe_batches(exp, mesh, split, PROBE_BATCHES, "train.balance=grad_blend")
            for split in ("train", "val")
        }

    def measure(self, state: nnx.State) -> np.ndarray:
        """The heads' (train, val) losses [2, 1 + M] on the probe batches."""
        rows = []
        for split in ("train", "val"):
            probes = self._probes[split]
            total = sum(self._losses(state, p.batch, p.valid) * p.rows for p in probes)
            rows.append(np.asarray(total) / sum(p.rows for p in probes))
        return np.stack(rows)

    def update(self, state: nnx.State) -> tuple[nnx.State, dict[str, jax.Array]]:
        now = self.measure(state)
        model, optimizer = nnx.merge(self.graphdef, state)
        weights, history = model.loss_weights[...], model.blend_history[...]
        before, current = np.asarray(history, np.float64), np.asarray(weights, np.float64)
        new = current if np.isnan(before).any() else gradient_blend_weights(before, now, current)
        model.loss_weights[...] = jax.device_put(new.astype(np.float32), weights.sharding)
        model.blend_history[...] = jax.device_put(now.astype(np.float32), history.sharding)
        names = ["fused", *self.modalities]
        metrics = {f"loss_weight_{k}": jnp.float32(w) for k, w in zip(names, new)}
        return nnx.state((model, optimizer)), metrics


def gradient_blend(
    graphdef: nnx.GraphDef, shardings: nnx.State, exp: ExperimentConfig, mesh: jax.sharding.Mesh
) -> GradientBlend | None:
    """The Gradient-Blending updater when `train.balance` asks for it."""
    if exp.train.balance != "grad_blend":
        return None
    require_two_modalities(exp)
    if exp.model.unimodal_weight <= 0:
        raise ConfigError(
            "train.balance=grad_blend weighs each modality's own classifier: set "
            "model.unimodal_weight > 0 (their starting weight, e.g. 1.0)"
        )
    return GradientBlend(graphdef, shardings, exp, mesh)
