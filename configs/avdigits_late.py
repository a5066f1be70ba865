"""AV-Digits, late fusion: small CNN (image) + CNN-LSTM (audio), late concat + MLP."""

from mmjax.experiments import avdigits_config


def get_config(arg: str | None = None):
    return avdigits_config("avdigits_late", arg)
