"""BERT-layout weights (Hugging Face names) onto mmjax's `text_transformer`."""

from collections.abc import Mapping

import numpy as np

from mmjax.pretrained.assign import Path, TrackedWeights

# Hugging Face BertModel parts the encoder does not have: the position-id buffer and the
# pooler (sentence-transformers mean-pools the tokens instead).
NOT_USED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")

_ATTENTION = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "output": "attention.output.dense",
}
_LAYER_LINEARS = {"intermediate": "intermediate.dense", "output": "output.dense"}
_LAYER_NORMS = {"attention_norm": "attention.output.LayerNorm", "output_norm": "output.LayerNorm"}


def _linear(weights: Mapping[str, np.ndarray], name: str, ours: Path) -> dict[Path, np.ndarray]:
    # torch Linear stores [out, in]; nnx.Linear's kernel is [in, out].
    return {
        (*ours, "kernel"): weights[f"{name}.weight"].T,
        (*ours, "bias"): weights[f"{name}.bias"],
    }


def _layer_norm(weights: Mapping[str, np.ndarray], name: str, ours: Path) -> dict[Path, np.ndarray]:
    return {(*ours, "scale"): weights[f"{name}.weight"], (*ours, "bias"): weights[f"{name}.bias"]}


def bert_table(weights: TrackedWeights) -> dict[Path, np.ndarray]:
    """{text_transformer path: array} for the weights of a Hugging Face BertModel."""
    table = {
        ("embeddings", "word", "embedding"): weights["embeddings.word_embeddings.weight"],
        ("embeddings", "position", "embedding"): weights["embeddings.position_embeddings.weight"],
        ("embeddings", "token_type", "embedding"): weights[
            "embeddings.token_type_embeddings.weight"
        ],
        **_layer_norm(weights, "embeddings.LayerNorm", ("embeddings", "norm")),
    }
    layers = sorted({int(k.split(".")[2]) for k in weights if k.startswith("encoder.layer.")})
    for i in layers:
        prefix = f"encoder.layer.{i}."
        for ours, theirs in _ATTENTION.items():
            table |= _linear(weights, prefix + theirs, ("layers", i, "attention", ours))
        for ours, theirs in _LAYER_LINEARS.items():
            table |= _linear(weights, prefix + theirs, ("layers", i, ours))
        for ours, theirs in _LAYER_NORMS.items():
            table |= _layer_norm(weights, prefix + theirs, ("layers", i, ours))
    return table
