"""The peer suite's models and inputs, free of PyTorch: the mmjax side of `mmjax bench peer`
imports only this module, so its process never loads torch. `benchmarks/peer_torch.py` builds
the PyTorch mirror of each model here."""

from collections.abc import Callable
from typing import Any

import numpy as np

from mmjax.models import zoo

_TEXT_ENCODER = {"name": "bilstm", "vocab_size": 10000, "embed_dim": 128, "hidden": 128}
_TEXT_LEN = 32
_NUM_CLASSES = 10


def _text_bilstm() -> dict[str, Any]:
    """BiLSTM text classifier: the text tower of `resnet18_bilstm_late` + late concat (128)."""
    fusion = {"name": "late_concat", "hidden": 128, "dropout": 0.1}
    return zoo._model({"text": dict(_TEXT_ENCODER)}, fusion)


def _text_bigru() -> dict[str, Any]:
    """The same classifier with a bidirectional GRU (`bigru`) in place of the LSTM."""
    section = _text_bilstm()
    section["encoders"]["text"]["name"] = "bigru"
    return section


PEERS: dict[str, Callable[[], dict]] = {
    "image_cnn": zoo.avdigits_image,
    "audio_cnn_lstm": zoo.avdigits_audio,
    "text_bilstm": _text_bilstm,
    "text_bigru": _text_bigru,
    "late_fusion": zoo.avdigits_late,
}
"""Peer name -> factory of the mmjax `model` config section it mirrors."""

INPUT_SHAPES: dict[str, dict[str, tuple]] = {
    "image_cnn": {"image": (8, 8, 1)},
    "audio_cnn_lstm": {"audio": (8000,)},
    "text_bilstm": {"text": (_TEXT_LEN,)},
    "text_bigru": {"text": (_TEXT_LEN,)},
    "late_fusion": {"image": (8, 8, 1), "audio": (8000,)},
}
"""Peer name -> {modality: per-example shape}; images/audio float32, text int32 ids."""


def numpy_batch(name: str, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for peer `name`, fed to both frameworks.

    image [B, 8, 8, 1] float32 in [0, 1); audio [B, 8000] float32 (8 kHz, std 0.1); text [B, 32]
    int32 ids in [1, 10000) followed by 0-padding (lengths uniform in [8, 32]); `<m>_mask` [B]
    bool, all True; label [B] int32 in [0, 10).
    """
    rng = np.random.default_rng(seed)
    batch: dict[str, np.ndarray] = {}
    for m, shape in INPUT_SHAPES[name].items():
        if m == "image":
            batch[m] = rng.random((batch_size, *shape), dtype=np.float32)
        elif m == "audio":
            batch[m] = (0.1 * rng.standard_normal((batch_size, *shape))).astype(np.float32)
        else:
            ids = rng.integers(1, _TEXT_ENCODER["vocab_size"], (batch_size, *shape))
            lengths = rng.integers(8, shape[0] + 1, (batch_size, 1))
            batch[m] = np.where(np.arange(shape[0]) < lengths, ids, 0).astype(np.int32)
        batch[f"{m}_mask"] = np.ones((batch_size,), bool)
    batch["label"] = rng.integers(0, _NUM_CLASSES, (batch_size,)).astype(np.int32)
    return batch
