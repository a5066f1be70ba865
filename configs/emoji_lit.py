"""Emoji image <-> caption, LiT-style: frozen ImageNet EfficientNet-Lite0 and frozen MiniLM-L6
towers, trained CLIP projections. Cache both towers once (`mmjax features extract --config
configs/emoji_lit.py --out runs/emoji_lit_features`), then train on them with
`--set data.features=runs/emoji_lit_features`."""

from mmjax.experiments import emoji_config


def get_config(arg: str | None = None):
    return emoji_config("emoji_lit", arg)
