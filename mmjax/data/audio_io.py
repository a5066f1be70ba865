"""Waveform helpers shared by dataset builders and `mmjax predict`.

`prepare_waveform` is the single preprocessing applied to synthetic clips, human
recordings and user files alike, so a model never sees audio prepared two ways.
"""

import wave as stdlib_wave
from math import gcd
from pathlib import Path

import numpy as np

from mmjax.errors import InputError

PEAK = 0.9
SILENCE_DB = -30.0
FRAME = 64


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Reads a PCM WAV file as mono float32 [S] in [-1, 1] and its sample rate.

    Channels are averaged. 8-bit (unsigned), 16-, 24- and 32-bit PCM are accepted.
    """
    try:
        with stdlib_wave.open(str(path), "rb") as f:
            width, channels, rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
            raw = f.readframes(f.getnframes())
    except (OSError, EOFError, stdlib_wave.Error) as e:
        raise InputError(f"{path}: cannot read audio ({e}); expected a PCM WAV file") from None
    samples = _pcm_to_float(raw, width, path)
    if samples.size == 0:
        raise InputError(f"{path}: the WAV file holds no samples; expected a PCM WAV file")
    return samples.reshape(-1, channels).mean(axis=1, dtype=np.float32), rate


def _pcm_to_float(raw: bytes, width: int, path: str | Path) -> np.ndarray:
    """Decodes interleaved little-endian PCM bytes to float32 in [-1, 1]."""
    if width == 1:
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    if width == 3:
        triples = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        ints = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        return ints.astype(np.float32) / float(1 << 23)
    if width == 4:
        return (np.frombuffer(raw, "<i4").astype(np.float64) / 2.0**31).astype(np.float32)
    raise InputError(f"{path}: {8 * width}-bit samples; expected a PCM WAV file of 8-32 bits")


def to_model_rate(wave: np.ndarray, sr: int, target_sr: int = 8000) -> np.ndarray:
    """Resamples float [S] from `sr` to `target_sr` -> float32 [S'].

    resample_poly low-passes at target_sr / 2, so synthetic 16-22 kHz speech loses the
    high band the 8 kHz human recordings never had (what makes TTS -> human transfer).
    """
    wave = np.asarray(wave, np.float32)
    if sr == target_sr:
        return wave
    from scipy.signal import resample_poly  # 0.66 s to import: not at every CLI start-up

    g = gcd(sr, target_sr)
    return resample_poly(wave, target_sr // g, sr // g).astype(np.float32)


def fit_length(wave: np.ndarray, length: int) -> np.ndarray:
    """Trims silence, centre-pads or centre-crops to `length`, peak-normalises -> [length].

    Silence is any leading/trailing FRAME-sample frame whose RMS is SILENCE_DB below the
    loudest frame. A silent input gives zeros.
    """
    wave = _trim_silence(np.asarray(wave, np.float32))
    if wave.size > length:
        start = (wave.size - length) // 2
        wave = wave[start : start + length]
    out = np.zeros(length, np.float32)
    start = (length - wave.size) // 2
    out[start : start + wave.size] = wave
    peak = np.abs(out).max()
    return out * (PEAK / peak) if peak > 1e-6 else out


def _trim_silence(wave: np.ndarray) -> np.ndarray:
    """Drops leading/trailing frames quieter than SILENCE_DB relative to the peak frame."""
    n = wave.size // FRAME
    if n == 0:
        return wave
    rms = np.sqrt(np.mean(wave[: n * FRAME].reshape(n, FRAME) ** 2, axis=1))
    if rms.max() <= 1e-6:
        return wave[:0]
    loud = np.flatnonzero(rms > rms.max() * 10 ** (SILENCE_DB / 20))
    return wave[loud[0] * FRAME : (loud[-1] + 1) * FRAME]


def prepare_waveform(
    wave: np.ndarray, sr: int, *, sample_rate: int = 8000, length: int = 8000
) -> np.ndarray:
    """Any mono float waveform [S] at `sr` -> the model's float32 [length] at `sample_rate`."""
    wave = np.asarray(wave)
    if wave.ndim != 1 or wave.size == 0 or not np.isfinite(wave).all():
        raise InputError(
            f"audio: expected a non-empty finite mono waveform [S], got shape {wave.shape}"
        )
    if sr <= 0:
        raise InputError(f"audio: expected a positive sample rate, got {sr}")
    return fit_length(to_model_rate(wave, sr, sample_rate), length)
