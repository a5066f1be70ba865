"""How much a model uses each modality while it trains (`train.utilisation_every`)."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.config import ExperimentConfig
from mmjax.train.probe_batches import probe_batches
from mmjax.train.step import make_eval_step


def utilisation_probe(
    graphdef: nnx.GraphDef, shardings: nnx.State, exp: ExperimentConfig, mesh: jax.sharding.Mesh
) -> Callable[[nnx.State], dict[str, jax.Array]] | None:
    """state -> {"val_batch_accuracy", "utilisation_<m>" per modality} on the first val batch
    (the accuracy drop with m masked out), as device arrays; None when not asked for."""
    if not exp.train.utilisation_every:
        return None
    modalities = exp.model.modalities
    (probe_batch,) = probe_batches(exp, mesh, "val", 1, "train.utilisation_every")
    batch = probe_batch.batch
    placed = {"": batch} | {
        m: {**batch, f"{m}_mask": jnp.zeros_like(batch[f"{m}_mask"])} for m in modalities
    }
    eval_step = make_eval_step(graphdef, shardings, mesh)

    def probe(state: nnx.State) -> dict[str, jax.Array]:
        accuracy = {}
        for m, b in placed.items():
            out = eval_step(state, b, probe_batch.valid)
            accuracy[m] = out["correct"] / out["examples"]
        drops = {f"utilisation_{m}": accuracy[""] - accuracy[m] for m in modalities}
        return {"val_batch_accuracy": accuracy[""], **drops}

    return probe
