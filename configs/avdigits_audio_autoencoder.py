"""AV-Digits audio, reconstruction pretraining of a convolutional autoencoder (no labels used)."""

from mmjax.experiments import avdigits_config


def get_config(arg: str | None = None):
    return avdigits_config("avdigits_audio_autoencoder", arg)
