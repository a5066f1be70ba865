"""AV-Digits, audio-only baseline (the late model's audio tower)."""

from mmjax.experiments import avdigits_config


def get_config(arg: str | None = None):
    return avdigits_config("avdigits_audio", arg)
