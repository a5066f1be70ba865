"""EfficientNet-Lite0 weights (lukemelas-style PyTorch names) onto `efficientnet_lite0`."""

import numpy as np

from mmjax.pretrained.assign import Path, TrackedWeights

# BatchNorm's update counters have no counterpart; the ImageNet classifier is loaded on its
# own (`mmjax.pretrained.load_classifier`), since the encoder ends at the 1280-channel head.
NOT_USED = ("*.num_batches_tracked", "_fc.*")
CLASSIFIER = ("_fc.weight", "_fc.bias")

_BLOCK_PARTS = {
    "expand": ("_expand_conv", "_bn0"),
    "depthwise": ("_depthwise_conv", "_bn1"),
    "project": ("_project_conv", "_bn2"),
}


def _conv_bn(weights: TrackedWeights, conv: str, bn: str, ours: Path) -> dict[Path, np.ndarray]:
    # torch Conv2d weights are [out, in/groups, kh, kw]; nnx.Conv kernels [kh, kw, in/groups, out].
    return {
        (*ours, "conv", "kernel"): weights[f"{conv}.weight"].transpose(2, 3, 1, 0),
        (*ours, "norm", "scale"): weights[f"{bn}.weight"],
        (*ours, "norm", "bias"): weights[f"{bn}.bias"],
        (*ours, "norm", "mean"): weights[f"{bn}.running_mean"],
        (*ours, "norm", "var"): weights[f"{bn}.running_var"],
    }


def efficientnet_table(weights: TrackedWeights) -> dict[Path, np.ndarray]:
    """{efficientnet_lite0 path: array} for an EfficientNet-Lite0 PyTorch state dict."""
    table = _conv_bn(weights, "_conv_stem", "_bn0", ("stem",))
    table |= _conv_bn(weights, "_conv_head", "_bn1", ("head",))
    blocks = sorted({int(k.split(".")[1]) for k in weights if k.startswith("_blocks.")})
    for i in blocks:
        for ours, (conv, bn) in _BLOCK_PARTS.items():
            if f"_blocks.{i}.{conv}.weight" in weights:  # the first block does not expand
                table |= _conv_bn(
                    weights, f"_blocks.{i}.{conv}", f"_blocks.{i}.{bn}", ("blocks", i, ours)
                )
    return table
