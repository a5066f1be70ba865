"""Audio encoders: a waveform [B, S] (log-mel computed on device) or features [B, T, F]."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from mmjax.errors import InputError
from mmjax.models.layers import ConvBNReLU, Features, features_from_tokens, sinusoidal_positions
from mmjax.models.logmel import LogMelConfig, log_mel_spectrogram
from mmjax.registry import ENCODERS


def _log_mel_features(x: jax.Array, mel: LogMelConfig) -> jax.Array:
    """x: waveform [B, S] -> per-utterance standardised log-mel [B, T, n_mels]; [B, T, F] passes."""
    if x.ndim == 3:
        return x
    if x.ndim != 2:
        raise InputError(f"audio: expected a waveform [B, S] or features [B, T, F], got {x.shape}")
    feats = log_mel_spectrogram(x, mel)
    mean = jnp.mean(feats, axis=(1, 2), keepdims=True)
    std = jnp.std(feats, axis=(1, 2), keepdims=True)
    return (feats - mean) / (std + 1e-5)


@dataclasses.dataclass(frozen=True)
class LogMelFields:
    """The log-mel front end's settings, shared by every waveform encoder's Config."""

    sample_rate: int = 8000
    n_fft: int = 256
    hop_length: int = 80
    n_mels: int = 40

    def log_mel(self) -> LogMelConfig:
        return LogMelConfig(self.sample_rate, self.n_fft, self.hop_length, self.n_mels)


@ENCODERS.register("cnn_lstm")
class CNNLSTM(nnx.Module):
    """Log-mel -> 2-D conv blocks (pooling time and frequency) -> LSTM over time."""

    modality = "audio"

    @dataclasses.dataclass(frozen=True)
    class Config(LogMelFields):
        channels: tuple[int, ...] = (16, 32)
        hidden: int = 64

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        self.mel = cfg.log_mel()
        widths = (1, *cfg.channels)
        self.blocks = nnx.List(
            [ConvBNReLU(c_in, c_out, rngs=rngs) for c_in, c_out in itertools.pairwise(widths)]
        )
        freq = cfg.n_mels // 2 ** len(cfg.channels)
        self.lstm = nnx.RNN(nnx.OptimizedLSTMCell(widths[-1] * freq, cfg.hidden, rngs=rngs))
        self.dim = cfg.hidden

    def __call__(self, x: jax.Array, *, train: bool) -> Features:
        x = _log_mel_features(x, self.mel)[..., None]  # [B, T, F, 1]
        for block in self.blocks:
            x = nnx.max_pool(block(x, train=train), (2, 2), (2, 2))
        tokens = self.lstm(rearrange(x, "b t f c -> b t (f c)"))
        return features_from_tokens(tokens)


@ENCODERS.register("audio_frames")
class AudioFrames(nnx.Module):
    """Log-mel frames, each linearly projected to one token: the shallow input of early fusion."""

    modality = "audio"

    @dataclasses.dataclass(frozen=True)
    class Config(LogMelFields):
        stride: int = 4  # frames averaged into one token
        dim: int = 64

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        self.mel = cfg.log_mel()
        self.stride = cfg.stride
        self.proj = nnx.Linear(cfg.n_mels, cfg.dim, rngs=rngs)
        self.dim = cfg.dim

    def __call__(self, x: jax.Array, *, train: bool) -> Features:
        feats = _log_mel_features(x, self.mel)
        tokens = self.proj(nnx.avg_pool(feats, (self.stride,), (self.stride,)))
        return features_from_tokens(tokens + sinusoidal_positions(tokens.shape[1], self.dim))
