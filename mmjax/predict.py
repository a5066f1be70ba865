"""Load a trained workdir and predict class probabilities for new samples."""

from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from mmjax.config import ExperimentConfig, experiment_from
from mmjax.models import validate_batch
from mmjax.parallel import data_mesh
from mmjax.train.workdir import read_experiment, restore_trained


class Predictor:
    """`predict(image=..., audio=...)` -> probabilities [B, C] (or [C] for one unbatched sample)."""

    def __init__(
        self,
        experiment: ExperimentConfig,
        dataset: dict[str, Any],
        model: nnx.Module,
        *,
        step: int | None = None,
    ):
        """`model` trained as `experiment` on `dataset` (the workdir record's description)."""
        self.experiment = experiment
        self.dataset = dataset
        self.step = step
        self.modalities = experiment.model.modalities
        self.sample_shapes = {m: tuple(dataset["modalities"][m]["shape"]) for m in self.modalities}
        self.num_classes = experiment.model.num_classes
        graphdef, params = nnx.split(model)
        self._forward = jax.jit(
            lambda params, batch: jax.nn.softmax(nnx.merge(graphdef, params)(batch, train=False))
        )
        self._params = params

    def predict(self, **inputs: Any) -> np.ndarray:
        """Modalities (and optional `<m>_mask`) as arrays, batched [B, ...] or one sample [...]."""
        single = all(
            np.ndim(inputs[m]) == len(self.sample_shapes[m]) for m in self.modalities if m in inputs
        ) and any(m in inputs for m in self.modalities)
        batch = {k: np.asarray(v)[None] if single else np.asarray(v) for k, v in inputs.items()}
        validate_batch(batch, self.modalities, sample_shapes=self.sample_shapes)
        probs = np.asarray(self._forward(self._params, batch))
        return probs[0] if single else probs


def load_predictor(workdir: str | Path, *, step: int | None = None) -> Predictor:
    """The model of `workdir` at its latest (or the given) checkpoint step."""
    record = read_experiment(Path(workdir))
    experiment = experiment_from(record["config"])
    mesh = data_mesh(jax.devices()[:1])
    step, graphdef, state = restore_trained(Path(workdir), experiment, mesh, step=step)
    model, _ = nnx.merge(graphdef, state)
    return Predictor(experiment, record["dataset"], model, step=step)
