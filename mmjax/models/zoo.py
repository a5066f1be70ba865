"""Named models: each a registered factory returning the `model` config section it stands for."""

from typing import Any

from mmjax.registry import MODELS

_SMALL_CNN = {"name": "small_cnn", "in_channels": 1, "channels": (32, 64), "dim": 64}
_CNN_LSTM = {"name": "cnn_lstm", "channels": (16, 32), "hidden": 64}
_LATE = {"name": "late_concat", "hidden": 128, "dropout": 0.1}
_MINILM = {  # all-MiniLM-L6-v2's sizes, so `pretrained: minilm-l6` fits
    "name": "text_transformer",
    "vocab_size": 30522,
    "hidden": 384,
    "layers": 6,
    "heads": 12,
    "intermediate": 1536,
}


def _model(
    encoders: dict[str, dict[str, Any]],
    fusion: dict[str, Any],
    *,
    num_classes: int = 10,
    classification_weight: float = 1.0,
    frozen: tuple[str, ...] = (),
    pretrained: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A `model` section; every modality gets a `pretrained` entry ("" = none) so that
    `--set model.pretrained.<modality>=NAME` works on any model."""
    return {
        "encoders": {m: dict(spec) for m, spec in encoders.items()},
        "fusion": dict(fusion),
        "num_classes": num_classes,
        "adversarial_weight": 0.0,
        "unimodal_weight": 0.0,
        "classification_weight": classification_weight,
        "frozen": frozen,
        "pretrained": {m: "" for m in encoders} | (pretrained or {}),
    }


@MODELS.register("avdigits_late")
def avdigits_late() -> dict[str, Any]:
    """AV-Digits: small CNN on the 8x8 digit, CNN-LSTM on the spoken digit, late concat + MLP."""
    return _model({"image": _SMALL_CNN, "audio": _CNN_LSTM}, _LATE)


@MODELS.register("avdigits_early")
def avdigits_early() -> dict[str, Any]:
    """AV-Digits: image patches and log-mel frames concatenated early into one Transformer."""
    return _model(
        {
            "image": {"name": "image_patches", "in_channels": 1, "patch": 2, "dim": 64},
            "audio": {"name": "audio_frames", "stride": 4, "dim": 64},
        },
        {"name": "early_concat", "dim": 64, "layers": 2, "heads": 4, "dropout": 0.1},
    )


@MODELS.register("avdigits_image")
def avdigits_image() -> dict[str, Any]:
    """AV-Digits image-only baseline (same image tower as avdigits_late)."""
    return _model({"image": _SMALL_CNN}, _LATE)


@MODELS.register("avdigits_audio")
def avdigits_audio() -> dict[str, Any]:
    """AV-Digits audio-only baseline (same audio tower as avdigits_late)."""
    return _model({"audio": _CNN_LSTM}, _LATE)


@MODELS.register("resnet18_bilstm_late")
def resnet18_bilstm_late() -> dict[str, Any]:
    """Image + caption classifier: ResNet-18 (CIFAR stem) and a BiLSTM, late concat + MLP."""
    return _model(
        {
            "image": {"name": "resnet18", "in_channels": 3, "width": 64, "stem": "cifar"},
            "text": {"name": "bilstm", "vocab_size": 10000, "embed_dim": 128, "hidden": 128},
        },
        {"name": "late_concat", "hidden": 256, "dropout": 0.1},
    )


@MODELS.register("avdigits_audio_autoencoder")
def avdigits_audio_autoencoder() -> dict[str, Any]:
    """AV-Digits audio, reconstruction pretraining: a conv autoencoder, no cross-entropy."""
    return _model(
        {
            "audio": {
                "name": "conv_autoencoder",
                "channels": (16, 32),
                "dim": 64,
                "reconstruction_weight": 1.0,
            }
        },
        _LATE,
        classification_weight=0.0,
    )


@MODELS.register("avdigits_audio_conv")
def avdigits_audio_conv() -> dict[str, Any]:
    """AV-Digits audio classifier on the conv autoencoder's encoder (fine-tune after
    `avdigits_audio_autoencoder` pretraining with train.init_from)."""
    model = avdigits_audio_autoencoder()
    model["encoders"]["audio"]["reconstruction_weight"] = 0.0
    return model | {"classification_weight": 1.0}


@MODELS.register("efficientnet_minilm_late")
def efficientnet_minilm_late() -> dict[str, Any]:
    """Image + caption classifier on ImageNet EfficientNet-Lite0 and MiniLM-L6 sentence
    encoders, late concat + MLP; start from the published weights with
    `pretrained={"image": "efficientnet-lite0", "text": "minilm-l6"}` (and freeze with
    `frozen=("image", "text")` to train only the head)."""
    return _model(
        {
            "image": {"name": "efficientnet_lite0", "in_channels": 3, "imagenet_input": True},
            "text": _MINILM,
        },
        {"name": "late_concat", "hidden": 256, "dropout": 0.1},
    )


@MODELS.register("emoji_lit")
def emoji_lit() -> dict[str, Any]:
    """Emoji image <-> caption, LiT-style (Zhai et al. 2022): frozen ImageNet EfficientNet-Lite0
    (emoji resized to 224x224) and frozen MiniLM-L6; only the CLIP head's projections train."""
    return _model(
        {
            "image": {"name": "efficientnet_lite0", "input_size": 224},
            "text": _MINILM | {"dropout": 0.0},
        },
        {"name": "clip", "dim": 128, "weight": 1.0},
        num_classes=9,
        classification_weight=0.0,
        frozen=("image", "text"),
        pretrained={"image": "efficientnet-lite0", "text": "minilm-l6"},
    )


@MODELS.register("emoji_clip")
def emoji_clip() -> dict[str, Any]:
    """Emoji image <-> caption two-tower (CLIP loss): a small CNN image tower trained against
    the frozen, pretrained MiniLM-L6 text tower; group classification off (zero-shot only)."""
    return _model(
        {
            "image": {"name": "small_cnn", "in_channels": 3, "channels": (32, 64, 128), "dim": 256},
            "text": _MINILM | {"dropout": 0.0},
        },
        {"name": "clip", "dim": 128, "weight": 1.0},
        num_classes=9,
        classification_weight=0.0,
        frozen=("text",),
        pretrained={"text": "minilm-l6"},
    )
