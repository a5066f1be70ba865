"""AV-Digits, image-only baseline (the late model's image tower)."""

from mmjax.experiments import avdigits_config


def get_config(arg: str | None = None):
    return avdigits_config("avdigits_image", arg)
