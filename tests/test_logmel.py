"""Parity of the JAX log-mel front end with librosa on a real speech clip, plus jit/grad checks."""

import os

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest
import soundfile
from scipy.signal import resample_poly

from mmjax.errors import InputError
from mmjax.models.logmel import (
    LogMelConfig,
    frames_for,
    log_mel_spectrogram,
    mel_filterbank,
    mel_spectrogram,
    power_spectrum,
)

CLIP = "/usr/share/asterisk/sounds/en/digits/7.wav"  # a person saying "seven", 8 kHz 16-bit PCM
CFG_8K = LogMelConfig()
CFG_16K = LogMelConfig(
    sample_rate=16000, n_fft=512, hop_length=160, n_mels=64, fmin=20.0, fmax=7600.0
)
TOLERANCE = 1e-4


def _clip(sample_rate: int) -> np.ndarray:
    """The real clip as float32 [S] in [-1, 1), resampled from 8 kHz to ``sample_rate``."""
    if not os.path.exists(CLIP):
        pytest.fail(f"{CLIP} is missing: apt-get install asterisk-core-sounds-en-wav")
    wave, rate = soundfile.read(CLIP, dtype="float64")
    assert rate == 8000
    return resample_poly(wave, sample_rate // rate, 1).astype(np.float32)


def _librosa_mel(wave: np.ndarray, cfg: LogMelConfig) -> np.ndarray:
    """librosa's mel power spectrogram as [T, n_mels]."""
    mel = librosa.feature.melspectrogram(
        y=wave,
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
        center=True,
        pad_mode="constant",
        power=2.0,
        htk=False,
        norm="slaney",
    )
    return mel.T


def _max_relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


@pytest.mark.parametrize("cfg", [CFG_8K, CFG_16K], ids=["8k", "16k"])
def test_filterbank_matches_librosa(cfg: LogMelConfig) -> None:
    expected = librosa.filters.mel(
        sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax
    ).T
    actual = mel_filterbank(cfg)
    assert actual.shape == (cfg.n_fft // 2 + 1, cfg.n_mels)
    assert actual.dtype == np.float32
    assert _max_relative_error(actual, expected) <= 1e-5


@pytest.mark.parametrize("cfg", [CFG_8K, CFG_16K], ids=["8k", "16k"])
def test_mel_spectrogram_matches_librosa_on_real_clip(cfg: LogMelConfig) -> None:
    wave = _clip(cfg.sample_rate)
    expected = _librosa_mel(wave, cfg)
    actual = np.asarray(mel_spectrogram(jnp.asarray(wave)[None], cfg))[0]
    assert actual.shape == expected.shape == (frames_for(wave.size, cfg), cfg.n_mels)
    scale = np.max(np.abs(expected))
    assert _max_relative_error(actual, expected) <= TOLERANCE
    np.testing.assert_allclose(actual, expected, rtol=TOLERANCE, atol=TOLERANCE * scale)


@pytest.mark.parametrize("n_fft", [256, 400, 511])
def test_power_spectrum_by_matmul_equals_fft(n_fft: int) -> None:
    """The DFT as a matmul (several devices) equals the FFT (one device) to float32 rounding:
    both sum n_fft products per bin, so 1e-5 of the largest bin covers their roundings."""
    frames = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3, n_fft)).astype(np.float32))
    fft = np.asarray(power_spectrum(frames, by_matmul=False))
    matmul = np.asarray(power_spectrum(frames, by_matmul=True))
    assert fft.shape == matmul.shape == (2, 3, n_fft // 2 + 1)
    np.testing.assert_allclose(matmul, fft, rtol=0, atol=1e-5 * np.max(fft))


def test_jit_matches_eager_with_expected_shape() -> None:
    wave = jnp.asarray(np.random.default_rng(0).normal(size=(3, 1234)).astype(np.float32))
    eager = log_mel_spectrogram(wave, CFG_8K)
    jitted = jax.jit(log_mel_spectrogram, static_argnums=1)(wave, CFG_8K)
    assert jitted.shape == (3, 1 + 1234 // CFG_8K.hop_length, CFG_8K.n_mels)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-5, atol=1e-5)


def test_gradient_wrt_wave_is_finite() -> None:
    wave = jnp.asarray(np.random.default_rng(1).normal(size=(2, 800)).astype(np.float32))
    # Zero the tail so some frames are silent: the gradient must stay finite there too.
    wave = wave.at[:, 400:].set(0.0)
    grad = jax.grad(lambda w: log_mel_spectrogram(w, CFG_8K).sum())(wave)
    assert grad.shape == wave.shape
    assert bool(jnp.all(jnp.isfinite(grad)))
    assert float(jnp.abs(grad).max()) > 0.0


@pytest.mark.parametrize("shape", [(800,), (1, 2, 800)], ids=["rank1", "rank3"])
def test_bad_rank_raises_input_error(shape: tuple[int, ...]) -> None:
    with pytest.raises(InputError, match=r"audio.*\[B, S\]"):
        log_mel_spectrogram(jnp.zeros(shape, jnp.float32), CFG_8K)


def test_too_short_wave_raises_input_error() -> None:
    short = CFG_8K.n_fft // 2
    with pytest.raises(InputError, match=r"audio.*\[B, S\]"):
        log_mel_spectrogram(jnp.zeros((1, short), jnp.float32), CFG_8K)
    assert log_mel_spectrogram(jnp.zeros((1, short + 1)), CFG_8K).shape == (1, 2, 40)
