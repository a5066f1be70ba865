"""How much a model uses each modality while it trains (`train.utilisation_every`)."""

from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from mmjax.config import ExperimentConfig
from mmjax.data import pipeline
from mmjax.errors import ConfigError, DataError
from mmjax.parallel import put_batch
from mmjax.train.step import make_eval_step


def utilisation_probe(
    graphdef: nnx.GraphDef, shardings: nnx.State, exp: ExperimentConfig, mesh: jax.sharding.Mesh
) -> Callable[[nnx.State], dict[str, jax.Array]] | None:
    """state -> {"val_batch_accuracy", "utilisation_<m>" per modality} on the first val batch
    (the accuracy drop with m masked out), as device arrays; None when not asked for."""
    if not exp.train.utilisation_every:
        return None
    modalities = exp.model.modalities
    try:
        batch, rows = next(
            pipeline.eval_batches(exp.data, modalities, "val", exp.train.eval_batch_size)
        )
    except (DataError, StopIteration):
        raise ConfigError(
            f"train.utilisation_every needs a 'val' split with records; {exp.data.name!r} has none"
        ) from None
    valid = put_batch({"v": np.arange(len(batch["label"])) < rows}, mesh)["v"]
    variants = {"": batch} | {
        m: {**batch, f"{m}_mask": np.zeros_like(batch[f"{m}_mask"])} for m in modalities
    }
    placed = {m: put_batch(b, mesh) for m, b in variants.items()}
    eval_step = make_eval_step(graphdef, shardings, mesh)

    def probe(state: nnx.State) -> dict[str, jax.Array]:
        accuracy = {}
        for m, b in placed.items():
            out = eval_step(state, b, valid)
            accuracy[m] = out["correct"] / out["examples"]
        drops = {f"utilisation_{m}": accuracy[""] - accuracy[m] for m in modalities}
        return {"val_batch_accuracy": accuracy[""], **drops}

    return probe
