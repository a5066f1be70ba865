"""Resemblyzer's speaker encoder imported onto speaker_lstm: equal to its own torch model."""

from pathlib import Path

import jax.numpy as jnp
import librosa
import numpy as np
import pytest
import soundfile

from mmjax.models.logmel import mel_spectrogram
from mmjax.pretrained import catalog
from mmjax.pretrained.load import load_encoder

CLIPS = Path("/usr/share/asterisk/sounds")
PARTIAL = 160  # frames: the 1.6 s partial utterance Resemblyzer embeds


def _speech(path: str, seconds: float = 1.59) -> np.ndarray:
    """A real spoken clip at 16 kHz, repeated to `seconds` (Asterisk prompts, from apt)."""
    wave, rate = soundfile.read(CLIPS / path, dtype="float32")
    wave = librosa.resample(wave, orig_sr=rate, target_sr=16000)
    reps = int(np.ceil(seconds * 16000 / len(wave)))
    return np.tile(wave, reps)[: int(seconds * 16000)]


@pytest.fixture(scope="module")
def waves() -> np.ndarray:
    return np.stack([_speech("en_US_f_Allison/digits/7.wav"), _speech("fr_CA_f_June/digits/7.wav")])


def test_embeddings_equal_resemblyzer(waves):
    torch = pytest.importorskip("torch", reason="parity needs `pip install torch==2.13.0`")
    resemblyzer = pytest.importorskip(
        "resemblyzer", reason="parity needs `pip install --no-deps resemblyzer webrtcvad-wheels`"
    )
    from resemblyzer.audio import wav_to_mel_spectrogram

    torch.set_num_threads(2)
    encoder = load_encoder("resemblyzer")
    reference = resemblyzer.VoiceEncoder(
        device="cpu", verbose=False, weights_fpath=catalog.weight_file(catalog.entry("resemblyzer"))
    )
    mels = np.stack([wav_to_mel_spectrogram(w) for w in waves])
    assert mels.shape == (2, PARTIAL, 40)
    ours = np.asarray(mel_spectrogram(jnp.asarray(waves), encoder.mel))
    assert np.abs(ours - mels).max() <= 1e-4 * np.abs(mels).max()
    with torch.no_grad():
        expected = reference(torch.from_numpy(mels)).numpy()
    embeddings = np.asarray(encoder(waves, train=False).pooled)
    assert np.abs(embeddings - expected).max() <= 1e-4
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert embeddings[0] @ embeddings[1] < 0.95  # two different speakers
