"""AV-Digits audio classification on the conv autoencoder's encoder, warm-started from a
reconstruction-pretraining run:

    mmjax train --config configs/avdigits_audio_autoencoder.py --workdir runs/audio_ae
    mmjax train --config configs/avdigits_audio_finetune.py --workdir runs/audio_ft \
        --set train.init_from=runs/audio_ae

Without train.init_from it trains the same model from scratch (the baseline).
"""

from mmjax.experiments import avdigits_config


def get_config(arg: str | None = None):
    config = avdigits_config("avdigits_audio_conv", arg)
    config.train.init_modules = ("encoders.audio",)
    return config
