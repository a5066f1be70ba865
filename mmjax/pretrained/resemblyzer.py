"""Resemblyzer's speaker encoder (PyTorch `nn.LSTM` + `nn.Linear`) onto `speaker_lstm`."""

import numpy as np

from mmjax.pretrained.assign import Path, TrackedWeights

# The GE2E similarity scale/bias only matter for its training loss; the file also carries
# the optimizer's moments.
NOT_USED = ("model_state.similarity_*", "optimizer_state.*")


def speaker_lstm_table(weights: TrackedWeights) -> dict[Path, np.ndarray]:
    """{speaker_lstm path: array}. torch's LSTM gate order (i, f, g, o) is that of
    nnx.OptimizedLSTMCell; its two biases add into the cell's one."""
    prefix = "model_state."
    layers = sorted(
        {int(k.rsplit("_l", 1)[1]) for k in weights if k.startswith(prefix + "lstm.weight_ih_l")}
    )
    table = {
        ("linear", "kernel"): weights[prefix + "linear.weight"].T,
        ("linear", "bias"): weights[prefix + "linear.bias"],
    }
    for i in layers:
        lstm = f"{prefix}lstm."
        cell = ("lstm", i, "cell")
        table[(*cell, "dense_i", "kernel")] = weights[f"{lstm}weight_ih_l{i}"].T
        table[(*cell, "dense_h", "kernel")] = weights[f"{lstm}weight_hh_l{i}"].T
        table[(*cell, "dense_h", "bias")] = (
            weights[f"{lstm}bias_ih_l{i}"] + weights[f"{lstm}bias_hh_l{i}"]
        )
    return table
