"""Cross-modal retrieval and zero-shot classification metrics for two-tower models."""

import functools
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from mmjax.batch_keys import attention_key, presence_key
from mmjax.compile_options import model_compiler_options
from mmjax.config import ExperimentConfig, experiment_from
from mmjax.data import pipeline, sources
from mmjax.errors import ConfigError
from mmjax.parallel import data_mesh
from mmjax.pretrained.load import tokenize
from mmjax.train.workdir import read_experiment, restore_trained


def recall_at_k(similarity: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """similarity [N, N] whose row i matches column i -> {"R@k": fraction of rows whose match
    is among the k most similar columns}. Ties count against the match."""
    ranks = (
        np.sum(similarity >= np.diag(similarity)[:, None], axis=1) - 1
    )  # others at least as close
    return {f"R@{k}": float(np.mean(ranks < k)) for k in ks}


def _embedder(model: nnx.Module):
    graphdef, state = nnx.split(model)

    @functools.partial(jax.jit, compiler_options=model_compiler_options())
    def embed(state: nnx.State, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        model = nnx.merge(graphdef, state)
        features, _ = model.encode(batch, train=False)
        return model.fusion.embed(features)

    return lambda batch: embed(state, batch)


def _class_name_prompts(info: dict[str, Any]) -> dict[str, np.ndarray]:
    """A text batch of the dataset's class names, tokenised as its captions are: {"text": ids
    [C, L], "text.attention_mask": [C, L] bool}."""
    vocab = info["text_vocab"]
    ids, mask = tokenize(vocab["tokenizer"], info["class_names"], length=vocab["length"])
    return {"text": ids, attention_key("text"): mask}


def two_tower_metrics(
    workdir: str | Path, split: str, *, data_root: str = "", batch_size: int = 100
) -> dict[str, Any]:
    """`model_metrics` of the latest checkpoint of `workdir`."""
    config = read_experiment(Path(workdir))["config"]
    if data_root:
        config.setdefault("data", {})["root"] = data_root
    exp = experiment_from(config)
    _, graphdef, state = restore_trained(Path(workdir), exp, data_mesh(jax.devices()[:1]))
    model, _ = nnx.merge(graphdef, state)
    return model_metrics(model, exp, split, batch_size=batch_size)


def model_metrics(
    model: nnx.Module, exp: ExperimentConfig, split: str, *, batch_size: int = 100
) -> dict[str, Any]:
    """Image <-> text retrieval (R@1, R@5 both ways) over every record of `split`, and zero-shot
    accuracy of images against the text embeddings of the dataset's class names."""
    if set(exp.model.modalities) != {"image", "text"} or not hasattr(model.fusion, "embed"):
        raise ConfigError("retrieval metrics need an image + text model with a two-tower head")
    embed = _embedder(model)
    dropped = {"label"} | {presence_key(m) for m in exp.model.modalities}
    images, texts, labels = [], [], []
    for batch, rows in pipeline.eval_batches(exp.data, exp.model.modalities, split, batch_size):
        inputs = {k: v for k, v in batch.items() if k not in dropped}
        out = jax.device_get(embed(inputs))  # raw inputs (text with its mask) or cached features
        images.append(out["image"][:rows])
        texts.append(out["text"][:rows])
        labels.append(batch["label"][:rows])
    image, text, label = (np.concatenate(x) for x in (images, texts, labels))
    similarity = image @ text.T
    info = sources.open_source(exp.data).info
    prompts = jax.device_get(embed(_class_name_prompts(info)))
    zero_shot = np.argmax(image @ prompts["text"].T, axis=1)
    return {
        "examples": len(label),
        "image_to_text": recall_at_k(similarity),
        "text_to_image": recall_at_k(similarity.T),
        "zero_shot_accuracy": float(np.mean(zero_shot == label)),
        "majority_class_rate": float(np.max(np.bincount(label)) / len(label)),
    }
