"""Load a trained workdir and predict class probabilities for new samples."""

from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from mmjax.config import experiment_from
from mmjax.errors import CheckpointError
from mmjax.models import validate_batch
from mmjax.parallel import data_mesh
from mmjax.train.checkpoint import Checkpointer
from mmjax.train.loop import sample_shapes
from mmjax.train.state import abstract_state, state_shardings
from mmjax.train.workdir import read_experiment


class Predictor:
    """`predict(image=..., audio=...)` -> probabilities [B, C] (or [C] for one unbatched sample)."""

    def __init__(self, workdir: str | Path, *, step: int | None = None):
        workdir = Path(workdir)
        record = read_experiment(workdir)
        self.experiment = experiment_from(record["config"])
        self.dataset = record["dataset"]
        self.modalities = self.experiment.model.modalities
        self.sample_shapes = sample_shapes(self.dataset, self.modalities)
        self.num_classes = self.experiment.model.num_classes
        mesh = data_mesh(jax.devices()[:1])
        graphdef, abstract = abstract_state(self.experiment)
        checkpointer = Checkpointer(
            workdir / "checkpoints", keep=self.experiment.train.keep_checkpoints, read_only=True
        )
        try:
            self.step = step if step is not None else checkpointer.latest_step()
            if self.step is None:
                raise CheckpointError(f"{workdir} has no checkpoint yet; train first")
            state = checkpointer.restore(self.step, abstract, state_shardings(abstract, mesh))
        finally:
            checkpointer.close()
        model, _ = nnx.merge(graphdef, state)
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
    return Predictor(workdir, step=step)
