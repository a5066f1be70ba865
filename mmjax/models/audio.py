"""Audio encoders: a waveform [B, S] (log-mel computed on device) or features [B, T, F]."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from mmjax.errors import ConfigError, InputError
from mmjax.models.batch_norm import batch_norm
from mmjax.models.layers import (
    ConvBNReLU,
    Features,
    TransformerBlock,
    features_from_tokens,
    sinusoidal_positions,
)
from mmjax.models.logmel import LogMelConfig, log_mel_spectrogram, mel_spectrogram
from mmjax.models.recurrent import run_rnn
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
            x = block.pooled(x, 2, 2, train=train)
        tokens = run_rnn(self.lstm, rearrange(x, "b t f c -> b t (f c)"))
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


def _stride2_size(n: int, blocks: int) -> int:
    """Length after `blocks` stride-2 'SAME' convolutions: ceil-halved each time."""
    for _ in range(blocks):
        n = -(-n // 2)
    return n


def _fit(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Crop or zero-pad axes 1 and 2 of x [B, T, F, ...] to `size`."""
    x = x[:, : size[0], : size[1]]
    pad = [(0, 0), (0, size[0] - x.shape[1]), (0, size[1] - x.shape[2])]
    return jnp.pad(x, pad + [(0, 0)] * (x.ndim - 3))


class UpBlock(nnx.Module):
    """Stride-2 transposed conv, doubling time and frequency; BatchNorm + ReLU unless `last`."""

    def __init__(self, c_in: int, c_out: int, *, last: bool = False, rngs: nnx.Rngs):
        self.conv = nnx.ConvTranspose(c_in, c_out, (3, 3), (2, 2), use_bias=last, rngs=rngs)
        self.norm = nnx.data(None if last else nnx.BatchNorm(c_out, momentum=0.9, rngs=rngs))

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = self.conv(x)
        if self.norm is None:
            return x
        return nnx.relu(batch_norm(self.norm, x, train=train))


@ENCODERS.register("conv_autoencoder")
class ConvAutoencoder(nnx.Module):
    """Convolutional autoencoder over the log-mel (Masci et al. 2011); encoder half -> Features.

    Encoder: stride-2 conv-BN-ReLU blocks over (time, mel), then each time step's
    (mel x channels) map is projected to one `dim` token. Decoder: the tokens are projected back
    to that map and stride-2 transposed convs rebuild the log-mel. `reconstruction_loss` gives a
    pretraining objective; `__call__` returns only the encoder's Features.
    """

    modality = "audio"

    @dataclasses.dataclass(frozen=True)
    class Config(LogMelFields):
        channels: tuple[int, ...] = (16, 32)
        dim: int = 64
        reconstruction_weight: float = 0.0  # > 0 adds the reconstruction loss to training

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        self.mel = cfg.log_mel()
        self.reconstruction_weight = cfg.reconstruction_weight
        widths = (1, *cfg.channels)
        self.encoder_blocks = nnx.List(
            [ConvBNReLU(c_in, c_out, 3, 2, rngs=rngs) for c_in, c_out in itertools.pairwise(widths)]
        )
        self.freq = _stride2_size(cfg.n_mels, len(cfg.channels))  # mel bins left after the convs
        self.proj = nnx.Linear(self.freq * widths[-1], cfg.dim, rngs=rngs)
        self.unproj = nnx.Linear(cfg.dim, self.freq * widths[-1], rngs=rngs)
        pairs = list(itertools.pairwise(widths))[::-1]  # (c_in, c_out) of each encoder block
        self.decoder_blocks = nnx.List(
            [
                UpBlock(c_out, c_in, last=i == len(pairs) - 1, rngs=rngs)
                for i, (c_in, c_out) in enumerate(pairs)
            ]
        )
        self.dim = cfg.dim

    def _encode(self, feats: jax.Array, *, train: bool) -> jax.Array:
        x = feats[..., None]  # [B, T, F, 1]
        for block in self.encoder_blocks:
            x = block(x, train=train)
        return self.proj(rearrange(x, "b t f c -> b t (f c)"))

    def __call__(self, x: jax.Array, *, train: bool) -> Features:
        return features_from_tokens(self._encode(_log_mel_features(x, self.mel), train=train))

    def _reconstruct(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(reconstruction, target, valid [B, T, F]): valid is False where the output was padded."""
        target = _log_mel_features(x, self.mel)
        y = rearrange(
            self.unproj(self._encode(target, train=train)), "b t (f c) -> b t f c", f=self.freq
        )
        for block in self.decoder_blocks:
            y = block(y, train=train)
        size = target.shape[1:3]
        valid = _fit(jnp.ones(y.shape[:3], bool), size)
        return _fit(y[..., 0], size), target, valid

    def aux_loss(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
        """{"reconstruction": weighted reconstruction loss} when the weight is set, else {}."""
        if self.reconstruction_weight <= 0:
            return {}
        return {
            "reconstruction": self.reconstruction_weight * reconstruction_loss(self, x, train=train)
        }

    def reconstruct(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        """Waveform [B, S] (or log-mel [B, T, F]) -> (reconstruction, target), both [B, T, F]."""
        reconstruction, target, _ = self._reconstruct(x, train=train)
        return reconstruction, target


def reconstruction_loss(encoder: ConvAutoencoder, x: jax.Array, *, train: bool) -> jax.Array:
    """Mean squared error of the log-mel reconstruction over the bins the decoder produced."""
    reconstruction, target, valid = encoder._reconstruct(x, train=train)
    weights = valid.astype(target.dtype)
    return jnp.sum(jnp.square(reconstruction - target) * weights) / jnp.maximum(weights.sum(), 1)


@ENCODERS.register("ast")
class AST(nnx.Module):
    """Audio Spectrogram Transformer (Gong et al. 2021): log-mel patches -> ViT; pooled = [CLS].

    Position embeddings are learned for the patch grid of `max_frames` x `n_mels`; inputs of
    another length get them bilinearly resampled to their grid (as in ViT fine-tuning). Inputs
    are zero-padded (the standardised mean) so every frame and mel bin falls in some patch.
    """

    modality = "audio"

    @dataclasses.dataclass(frozen=True)
    class Config(LogMelFields):
        patch: int = 16  # patch size over (time, mel)
        patch_stride: int = 16  # < patch gives overlapping patches (AST uses 10)
        max_frames: int = 101  # frames the position embeddings are sized for (1 s at defaults)
        dim: int = 192
        depth: int = 4
        heads: int = 3
        dropout: float = 0.0

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        if not 0 < cfg.patch_stride <= cfg.patch:
            raise ConfigError(
                f"ast: patch_stride must be in [1, patch={cfg.patch}], got {cfg.patch_stride}"
            )
        self.mel = cfg.log_mel()
        self.patch, self.stride = cfg.patch, cfg.patch_stride
        p, s = (cfg.patch,) * 2, (cfg.patch_stride,) * 2
        self.embed = nnx.Conv(1, cfg.dim, p, s, padding="VALID", rngs=rngs)
        init = nnx.initializers.truncated_normal(0.02)
        grid = (self._grid(cfg.max_frames), self._grid(cfg.n_mels))
        self.position = nnx.Param(init(rngs.params(), (*grid, cfg.dim)))
        self.cls_token = nnx.Param(init(rngs.params(), (1, 1, cfg.dim)))
        self.blocks = nnx.List(
            [
                TransformerBlock(cfg.dim, cfg.heads, dropout=cfg.dropout, rngs=rngs)
                for _ in range(cfg.depth)
            ]
        )
        self.norm = nnx.LayerNorm(cfg.dim, rngs=rngs)
        self.dim = cfg.dim

    def _padded(self, n: int) -> int:
        """Length >= n (and >= patch) that patches of the configured stride tile exactly."""
        return self.patch + -(-max(n - self.patch, 0) // self.stride) * self.stride

    def _grid(self, n: int) -> int:
        return (self._padded(n) - self.patch) // self.stride + 1

    def __call__(self, x: jax.Array, *, train: bool) -> Features:
        feats = _log_mel_features(x, self.mel)
        t, f = feats.shape[1:]
        feats = jnp.pad(feats, ((0, 0), (0, self._padded(t) - t), (0, self._padded(f) - f)))
        patches = self.embed(feats[..., None])  # [B, T', F', D]
        position = self.position[...]
        if position.shape[:2] != patches.shape[1:3]:
            position = jax.image.resize(position, (*patches.shape[1:3], self.dim), "bilinear")
        tokens = rearrange(patches + position, "b t f d -> b (t f) d")
        cls = jnp.broadcast_to(self.cls_token[...], (tokens.shape[0], 1, self.dim))
        tokens = jnp.concatenate([cls, tokens], axis=1)
        mask = jnp.ones(tokens.shape[:2], bool)
        for block in self.blocks:
            tokens = block(tokens, mask, train=train)
        tokens = self.norm(tokens)
        return Features(tokens[:, 1:], mask[:, 1:], tokens[:, 0])


@ENCODERS.register("speaker_lstm")
class SpeakerLSTM(nnx.Module):
    """GE2E speaker encoder (Wan et al. 2018) in Resemblyzer's layout: 40-band mel *power*
    frames at 16 kHz (25 ms windows, 10 ms hop, no log) -> stacked LSTM -> Linear + ReLU.

    tokens are the per-frame embeddings [B, T, dim]; pooled is the last frame's, L2-normalised,
    which is Resemblyzer's embedding of a partial utterance (160 frames = 1.6 s in its use).
    Takes a waveform [B, S] or mel frames [B, T, n_mels].
    """

    modality = "audio"

    @dataclasses.dataclass(frozen=True)
    class Config(LogMelFields):
        sample_rate: int = 16000
        n_fft: int = 400
        hop_length: int = 160
        hidden: int = 256
        layers: int = 3
        dim: int = 256

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        self.mel = cfg.log_mel()
        widths = (cfg.n_mels, *[cfg.hidden] * cfg.layers)
        self.lstm = nnx.List(
            [
                nnx.RNN(nnx.OptimizedLSTMCell(c_in, c_out, rngs=rngs))
                for c_in, c_out in itertools.pairwise(widths)
            ]
        )
        self.linear = nnx.Linear(cfg.hidden, cfg.dim, rngs=rngs)
        self.dim = cfg.dim

    def __call__(self, x: jax.Array, *, train: bool) -> Features:
        if x.ndim not in (2, 3):
            raise InputError(f"audio: expected a waveform [B, S] or mels [B, T, F], got {x.shape}")
        h = mel_spectrogram(x, self.mel) if x.ndim == 2 else x
        for layer in self.lstm:
            h = run_rnn(layer, h)
        tokens = jax.nn.relu(self.linear(h))
        last = tokens[:, -1]
        pooled = last / jnp.maximum(jnp.linalg.norm(last, axis=-1, keepdims=True), 1e-12)
        return Features(tokens, jnp.ones(tokens.shape[:2], bool), pooled)
