"""Emoji image <-> caption: a CNN image tower trained against frozen MiniLM-L6 (CLIP loss)."""

from mmjax.experiments import emoji_config


def get_config(arg: str | None = None):
    return emoji_config("emoji_clip", arg)
