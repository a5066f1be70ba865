"""Load a trained workdir and predict classes (names) and class probabilities for new inputs."""

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from mmjax.compile_options import model_compiler_options
from mmjax.config import experiment_from
from mmjax.data.inputs import prepare_inputs
from mmjax.data.source import class_names
from mmjax.models import validate_batch
from mmjax.parallel import data_mesh, replicated
from mmjax.train.step import EvalStep, make_eval_step
from mmjax.train.workdir import read_experiment, restore_trained


class Predictor:
    """`predict(image=..., text=...)` -> class names; `predict_proba(...)` -> probabilities
    [B, C] ([C] for one unbatched sample), as in scikit-learn.

    Each modality takes files (a path or the file's bytes), texts, or arrays, one sample or a
    list / batch of them; files and texts are prepared as the training data was
    (`mmjax.data.inputs`). `class_names` orders the probabilities' columns.
    """

    def __init__(
        self,
        config: dict[str, Any],
        dataset: dict[str, Any],
        model: nnx.Module,
        *,
        step: int | None = None,
    ):
        """`model` trained with experiment `config` (its JSON form) on `dataset` (the workdir
        record's description); `model` is the underlying `nnx.Module`."""
        self.config = config
        self.experiment = experiment = experiment_from(config)
        self.dataset = dataset
        self.model = model
        self.step = step
        self.modalities = experiment.model.modalities
        self.sample_shapes = {m: tuple(dataset["modalities"][m]["shape"]) for m in self.modalities}
        self.num_classes = experiment.model.num_classes
        self.class_names = class_names(dataset)
        graphdef, params = nnx.split(model)
        self._forward = jax.jit(
            lambda params, batch: jax.nn.softmax(nnx.merge(graphdef, params)(batch, train=False)),
            compiler_options=model_compiler_options(),
        )
        self.graphdef, self.params = graphdef, params  # the model, split
        self._eval_step: EvalStep | None = None  # compiled on the first `evaluate`

    def predict_proba(self, **inputs: Any) -> np.ndarray:
        """Class probabilities [B, C], or [C] for one unbatched sample."""
        batch, single = prepare_inputs(self.dataset, self.modalities, inputs)
        validate_batch(batch, self.modalities, sample_shapes=self.sample_shapes)
        probs = np.asarray(self._forward(self.params, batch))
        return probs[0] if single else probs

    def batch_proba(self, batch: dict[str, Any]) -> np.ndarray:
        """Class probabilities [B, C] of a batch as the data pipeline yields it: each modality's
        input, `<modality>_mask`, text attention masks or cached features (`mmjax.batch_keys`);
        other keys (the label) are ignored."""
        return np.asarray(self._forward(self.params, batch))

    def evaluate(
        self, split: str, *, data_root: str = "", missing: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """Accuracy, loss, macro F1, per-class accuracy and confusion matrix on `split` of the
        dataset the model was trained on (found under `data_root`, default the configured
        one), with the training data's settings and the `missing` modalities masked out for
        every sample. One compiled eval step serves every call."""
        from mmjax.train.loop import evaluate  # it imports this module (via mmjax.fewshot)

        config = json.loads(json.dumps(self.config))
        if data_root:
            config["data"]["root"] = data_root
        mesh = data_mesh(_first())
        if self._eval_step is None:
            shardings = jax.tree.map(lambda _: replicated(mesh), self.params)  # one device
            self._eval_step = make_eval_step(self.graphdef, shardings, mesh)
        exp = experiment_from(config)
        return evaluate(
            self.graphdef, self.params, exp, split, mesh, missing=missing, eval_step=self._eval_step
        )

    def predict(self, **inputs: Any) -> list[str] | str:
        """The most probable class's name per sample (one name for one unbatched sample)."""
        probs = self.predict_proba(**inputs)
        best = np.argmax(probs, axis=-1)
        return (
            self.class_names[int(best)] if best.ndim == 0 else [self.class_names[k] for k in best]
        )


def load_predictor(
    workdir: str | Path, *, step: int | None = None, best: bool = False
) -> Predictor:
    """The model of `workdir` at its latest (or the given) checkpoint step, or with `best` at
    the checkpoint that scored best on its `train.keep_best`."""
    record = read_experiment(Path(workdir))
    experiment = experiment_from(record["config"])
    mesh = data_mesh(_first())
    step, graphdef, state = restore_trained(
        Path(workdir), experiment, mesh, step=step, best=best, model_only=True
    )
    model = nnx.merge(graphdef, state)
    return Predictor(record["config"], record["dataset"], model, step=step)


def _first() -> list[jax.Device]:
    """The device a predictor runs on."""
    return jax.devices()[:1]
