"""Few-shot linear probes on a trained model's frozen representations: the fused vector (the
fusion head's output) and each encoder's pooled features.

As big_vision's few-shot evaluator does (`evaluators/fewshot_lsr.py`): per draw, `shots`
training examples of every class (the same ordering of each class for every shot count, so a
larger support set contains the smaller ones); features standardised by the support set's
mean and std, a constant 100 appended for the bias (large, so it is nearly unregularised);
targets one-hot in {-1, 1}; the L2-regularised least-squares solution in closed form; the
test split classified by the arg-max of the probe's outputs. A per-encoder probe uses only the
examples in which that modality is present. `training_probe` runs the same probes on the fused
vector while a model trains (`train.fewshot_every`).
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from mmjax.compile_options import model_compiler_options
from mmjax.config import ExperimentConfig
from mmjax.data import pipeline
from mmjax.errors import ConfigError
from mmjax.parallel import batch_sharded, replicated
from mmjax.predict import Predictor
from mmjax.train.probe_batches import PROBE_BATCHES, ProbeBatch, probe_batches

L2_REG = 2.0**10  # big_vision's default l2_reg
BIAS_FEATURE = 100.0
FUSED = "fused"


def fit_probe(x: np.ndarray, labels: np.ndarray, num_classes: int, l2: float) -> dict:
    """The closed-form probe of features x [N, D] for `labels` [N]: {mean, std, weights
    [D + 1, C]}. Solves (Z^T Z + l2 I) W = Z^T T, or W = Z^T (Z Z^T + l2 I)^-1 T when N < D,
    with Z the standardised features plus the bias feature and T the {-1, 1} one-hot targets."""
    x = np.asarray(x, np.float64)
    mean, std = x.mean(0), x.std(0) + 1e-5
    z = _design(x, mean, std)
    targets = 2.0 * np.eye(num_classes)[labels] - 1.0
    n, d = z.shape
    if n >= d:
        weights = np.linalg.solve(z.T @ z + l2 * np.eye(d), z.T @ targets)
    else:
        weights = z.T @ np.linalg.solve(z @ z.T + l2 * np.eye(n), targets)
    return {"mean": mean, "std": std, "weights": weights}


def _design(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    z = (np.asarray(x, np.float64) - mean) / std
    return np.concatenate([z, np.full((len(z), 1), BIAS_FEATURE)], axis=1)


def probe_predict(probe: dict, x: np.ndarray) -> np.ndarray:
    """Predicted classes [N] of features x [N, D]."""
    return np.argmax(_design(x, probe["mean"], probe["std"]) @ probe["weights"], axis=1)


def _represent(graphdef: nnx.GraphDef, params: nnx.State, batch: dict) -> tuple[dict, dict]:
    model = nnx.merge(graphdef, params)
    features, masks = model.encode(batch, train=False)
    vectors = {FUSED: model.fusion(features, masks, train=False)}
    return vectors | {m: f.pooled for m, f in features.items()}, masks


def representations(
    predictor: Predictor, split: str, data_root: str = ""
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Every record of `split`: ({"fused" or modality: vectors [N, D]}, {same: present [N]},
    labels [N]); "fused" is present everywhere."""
    exp = predictor.experiment
    data = dataclasses.replace(exp.data, root=data_root or exp.data.root)
    represent = jax.jit(_represent, static_argnums=0, compiler_options=model_compiler_options())
    vectors, present, labels = [], [], []
    for batch, rows in pipeline.eval_batches(
        data, predictor.modalities, split, exp.train.eval_batch_size
    ):
        labels.append(batch.pop("label")[:rows])
        out, masks = jax.device_get(represent(predictor.graphdef, predictor.params, batch))
        vectors.append({k: v[:rows] for k, v in out.items()})
        present.append({m: masks[m][:rows] for m in masks} | {FUSED: np.ones(rows, bool)})
    if not labels:
        raise ConfigError(f"split {split!r} of {data.name!r} has no records")
    joined = {k: np.concatenate([v[k] for v in vectors]) for k in vectors[0]}
    return (
        joined,
        {k: np.concatenate([p[k] for p in present]) for k in present[0]},
        np.concatenate(labels),
    )


def check_shots(shots: Sequence[int], draws: int) -> None:
    if not shots or any(k < 1 for k in shots):
        raise ConfigError(f"--shots: {list(shots)}: each must be a whole number >= 1")
    if draws < 1:
        raise ConfigError(f"--draws: {draws}: must be >= 1")


def evaluate(
    predictor: Predictor,
    shots: Sequence[int],
    *,
    draws: int = 5,
    l2: float = L2_REG,
    train_split: str = "train",
    test_split: str = "test",
    data_root: str = "",
) -> dict[str, Any]:
    """Few-shot accuracy on `test_split` of probes fitted on `shots` examples per class of
    `train_split`, per representation: mean, std and every draw's value."""
    check_shots(shots, draws)
    shots = sorted(set(shots))
    num_classes = predictor.num_classes
    train = representations(predictor, train_split, data_root)
    test = representations(predictor, test_split, data_root)
    names = list(predictor.class_names)
    result = {
        "train_split": train_split,
        "test_split": test_split,
        "l2": l2,
        "draws": draws,
        "shots": shots,
        "representations": {},
    }
    for rep in [FUSED, *predictor.modalities]:
        x, present, y = train[0][rep], train[1][rep], train[2]
        counts = np.bincount(y[present], minlength=num_classes)
        smallest = int(np.argmin(counts))
        if shots[-1] > counts[smallest]:
            where = "" if rep == FUSED else f" with {rep} present"
            raise ConfigError(
                f"--shots {shots[-1]}: class {names[smallest]!r} has only {counts[smallest]} "
                f"examples in {train_split!r}{where}; use --shots <= {counts[smallest]}"
            )
        keep = test[1][rep]
        x_test, y_test = test[0][rep][keep], test[2][keep]
        accuracy = {k: [] for k in shots}
        for draw in range(draws):
            rng = np.random.default_rng(draw)
            order = [
                rng.permutation(np.flatnonzero(present & (y == c))) for c in range(num_classes)
            ]
            for k in shots:
                support = np.concatenate([o[:k] for o in order])
                probe = fit_probe(x[support], y[support], num_classes, l2)
                accuracy[k].append(float(np.mean(probe_predict(probe, x_test) == y_test)))
        result["representations"][rep] = {
            "dim": int(x.shape[1]),
            "test_examples": int(keep.sum()),
            "accuracy": {
                str(k): {"mean": float(np.mean(v)), "std": float(np.std(v)), "draws": v}
                for k, v in accuracy.items()
            },
        }
    return result


def training_probe(
    graphdef: nnx.GraphDef, shardings: nnx.State, exp: ExperimentConfig, mesh: jax.sharding.Mesh
) -> Callable[[nnx.State], dict[str, float]] | None:
    """state -> {"fewshot_<k>shot": accuracy} of probes on the fused vector, every k of
    `train.fewshot_shots`: supports of k per class (draw 0) from the first PROBE_BATCHES eval
    batches of train, queries the first PROBE_BATCHES of val. None when not asked for."""
    if not exp.train.fewshot_every:
        return None
    shots = sorted(set(exp.train.fewshot_shots))
    pool, queries = (
        probe_batches(exp, mesh, split, PROBE_BATCHES, "train.fewshot_every")
        for split in ("train", "val")
    )
    labels = np.concatenate([p.labels for p in pool])
    counts = np.bincount(labels, minlength=exp.model.num_classes)
    if shots[-1] > counts.min():
        raise ConfigError(
            f"train.fewshot_shots {shots[-1]}: the support pool (the first "
            f"{PROBE_BATCHES * exp.train.eval_batch_size} train records) has only "
            f"{counts.min()} of class {int(counts.argmin())}"
        )
    rng = np.random.default_rng(0)
    order = [rng.permutation(np.flatnonzero(labels == c)) for c in range(len(counts))]
    query_labels = np.concatenate([p.labels for p in queries])

    def fused(state: nnx.State, batch: dict) -> jax.Array:
        model, _ = nnx.merge(graphdef, state)
        inputs = {k: v for k, v in batch.items() if k != "label"}
        features, masks = model.encode(inputs, train=False)
        return model.fusion(features, masks, train=False)

    represent = jax.jit(
        fused,
        in_shardings=(shardings, batch_sharded(mesh)),
        out_shardings=replicated(mesh),
        compiler_options=model_compiler_options(),
    )

    def vectors(state: nnx.State, batches: list[ProbeBatch]) -> np.ndarray:
        return np.concatenate([np.asarray(represent(state, p.batch))[: p.rows] for p in batches])

    def probe(state: nnx.State) -> dict[str, float]:
        x, x_query = vectors(state, pool), vectors(state, queries)
        out = {}
        for k in shots:
            support = np.concatenate([o[:k] for o in order])
            fitted = fit_probe(x[support], labels[support], len(counts), L2_REG)
            out[f"fewshot_{k}shot"] = float(np.mean(probe_predict(fitted, x_query) == query_labels))
        return out

    return probe
