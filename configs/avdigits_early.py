"""AV-Digits, early fusion: image patches + log-mel frames in one joint Transformer."""

from mmjax.experiments import avdigits_config


def get_config(arg: str | None = None):
    return avdigits_config("avdigits_early", arg)
