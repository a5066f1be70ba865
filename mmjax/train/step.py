"""Pure train and eval steps, jit-compiled once over the split (graphdef, state)."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mmjax.parallel import batch_sharded, replicated

Batch = dict[str, jax.Array]


def _inputs(batch: Batch) -> Batch:
    return {k: v for k, v in batch.items() if k != "label"}


def training_loss(
    model: nnx.Module, batch: Batch
) -> tuple[jax.Array, tuple[jax.Array, dict[str, jax.Array]]]:
    """(total loss, (logits [B, C], {term: scalar})): weighted cross-entropy plus every
    auxiliary loss the model reports (reconstruction, contrastive, adversarial)."""
    logits, aux = model.forward(_inputs(batch), train=True)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    total = model.classification_weight * ce + sum(aux.values())
    return total, (logits, {"cross_entropy": ce, **aux})


def make_train_step(
    graphdef: nnx.GraphDef, shardings: nnx.State, mesh: jax.sharding.Mesh
) -> Callable[[nnx.State, Batch], tuple[nnx.State, dict[str, jax.Array]]]:
    """(state, batch) -> (new state, metrics); the state is donated, the batch sharded on data."""

    def train_step(state: nnx.State, batch: Batch) -> tuple[nnx.State, dict[str, jax.Array]]:
        model, optimizer = nnx.merge(graphdef, state)

        differentiate = nnx.DiffState(0, model.trainable())
        (loss, (logits, terms)), grads = nnx.value_and_grad(
            training_loss, argnums=differentiate, has_aux=True
        )(model, batch)
        optimizer.update(model, grads)
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
            "grad_norm": optax.tree.norm(grads),
            **terms,
        }
        return nnx.state((model, optimizer)), metrics

    return jax.jit(
        train_step,
        in_shardings=(shardings, batch_sharded(mesh)),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=0,
    )


def make_eval_step(
    graphdef: nnx.GraphDef, shardings: nnx.State, mesh: jax.sharding.Mesh
) -> Callable[[nnx.State, Batch, jax.Array], dict[str, jax.Array]]:
    """(state, batch, valid [B] bool) -> summed loss and correct count over the valid rows."""

    def eval_step(state: nnx.State, batch: Batch, valid: jax.Array) -> dict[str, jax.Array]:
        model, _ = nnx.merge(graphdef, state)
        logits = model(_inputs(batch), train=False)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        correct = jnp.argmax(logits, -1) == batch["label"]
        return {"loss_sum": jnp.sum(loss * valid), "correct": jnp.sum(correct * valid)}

    return jax.jit(
        eval_step,
        in_shardings=(shardings, batch_sharded(mesh), batch_sharded(mesh)),
        out_shardings=replicated(mesh),
    )
