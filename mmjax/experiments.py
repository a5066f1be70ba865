"""Shared experiment defaults that the files in configs/ build on."""

import dataclasses

import ml_collections

from mmjax.config import DataConfig, OptimConfig, ParallelConfig, TrainConfig
from mmjax.errors import ConfigError
from mmjax.registry import MODELS

# AV-Digits' default corruption: strong enough that neither modality alone is reliable.
AVDIGITS_IMAGE_NOISE = 0.4
AVDIGITS_AUDIO_SNR_DB = 0.0


def experiment_config(
    model: str | dict,
    data: DataConfig,
    learning_rate: float,
    eval_splits: tuple[str, ...],
    arg: str | None,
) -> ml_collections.ConfigDict:
    """1,000 steps of batch 64 with AdamW for `model` (a registered model's name, or a `model`
    section) on `data`; arg "tiny" shrinks it for tests."""
    train = TrainConfig(
        batch_size=64,
        steps=1000,
        log_every=50,
        checkpoint_every=250,
        eval_batch_size=100,
        eval_splits=eval_splits,
    )
    cfg = ml_collections.ConfigDict(
        {
            "model": MODELS.get(model)() if isinstance(model, str) else model,
            "optim": dataclasses.asdict(OptimConfig(learning_rate=learning_rate, warmup_steps=100)),
            "data": dataclasses.asdict(data),
            "train": dataclasses.asdict(train),
            "parallel": dataclasses.asdict(ParallelConfig()),
        }
    )
    if arg == "tiny":
        cfg.train.steps, cfg.train.batch_size, cfg.train.log_every = 20, 16, 5
        cfg.train.checkpoint_every, cfg.train.eval_batch_size = 10, 20
    elif arg:
        raise ConfigError(f"unknown config argument {arg!r}; expected nothing or 'tiny'")
    return cfg


def avdigits_config(model: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """An AV-Digits experiment for the registered model `model`; arg "tiny" shrinks it for tests."""
    data = DataConfig(
        name="avdigits", image_noise=AVDIGITS_IMAGE_NOISE, audio_snr_db=AVDIGITS_AUDIO_SNR_DB
    )
    return experiment_config(model, data, 2e-3, ("val", "test", "test_human"), arg)


def emoji_config(model: str = "emoji_clip", arg: str | None = None) -> ml_collections.ConfigDict:
    """An emoji image <-> caption experiment; its metrics are retrieval and zero-shot accuracy
    (mmjax.train.retrieval), so the classifier's eval splits are off."""
    return experiment_config(model, DataConfig(name="emoji"), 1e-3, (), arg)


def product_clips_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Product clips as the task is usually written: a BiLSTM over the title starting from
    MiniLM-L6 word vectors, ResNet-50 on every frame with an LSTM over the frames, a log-mel
    CNN-LSTM over the voice-over, late concatenation + MLP; cross-entropy and Adam (no weight
    decay). The word vectors and the vocabulary are files of the build under the data root
    ($MMJAX_DATA when this config is read). arg "tiny" shrinks it for tests."""
    from mmjax.auto_config import audio_encoder, component
    from mmjax.data.builders import product_clips
    from mmjax.data.sources import data_root
    from mmjax.registry import ENCODERS, FUSIONS

    built = data_root() / product_clips.NAME
    text = component(
        ENCODERS,
        "bilstm",
        vocab_size=product_clips.VOCAB_SIZE,
        embed_dim=product_clips.WORD_VECTOR_DIM,
        hidden=64,
        embeddings=str(built / product_clips.WORD_VECTORS),
        vocab=str(built / "vocab.txt"),
    )
    video = component(ENCODERS, "video", frame_encoder="resnet50", temporal="lstm", hidden=128)
    model = {
        "encoders": {
            "text": text,
            "video": video,
            "audio": audio_encoder(product_clips.FULL.sample_rate),
        },
        "fusion": component(FUSIONS, "late_concat", hidden=128),
        "num_classes": len(product_clips.CLASSES),
        "adversarial_weight": 0.0,
        "unimodal_weight": 0.0,
        "classification_weight": 1.0,
        "frozen": (),
        "pretrained": {"text": "", "video": "", "audio": ""},
    }
    data = DataConfig(name=product_clips.NAME)
    cfg = experiment_config(model, data, 1e-3, ("val", "test"), arg)
    cfg.optim.weight_decay = 0.0  # Adam
    cfg.train.batch_size = cfg.train.eval_batch_size = 32 if arg != "tiny" else 8
    return cfg
