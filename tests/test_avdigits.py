"""AV-Digits: audio helpers, record I/O and a small real build (espeak-ng, flite, Asterisk)."""

import re
import shutil
import wave

import numpy as np
import pytest

from mmjax.data import audio_io
from mmjax.data.builders import avdigits, voices
from mmjax.data.records import decode_record, encode_record
from mmjax.errors import DataError, InputError
from mmjax.registry import DATASETS

TTS_SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(root, info) of one small build shared by the module."""
    root = tmp_path_factory.mktemp("data")
    return root, avdigits.prepare_avdigits(root, small=True, progress=False)


def _records(root, split):
    import grain  # imports jax; only the tests that read shards need it

    source = grain.sources.ArrayRecordDataSource(
        [str(p) for p in avdigits.shard_paths(root, split)]
    )
    return [decode_record(source[i]) for i in range(len(source))]


def _language(voice: str) -> str:
    """'espeak:fr-be+m1' -> 'fr'; flite voices are English."""
    tool, name = voice.split(":")
    return "en" if tool == "flite" else name.split("+")[0].split("-")[0]


def _tone(freq: float, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.sin(2 * np.pi * freq * t).astype(np.float32)


def test_registered():
    assert DATASETS.get("avdigits").prepare is avdigits.prepare_avdigits


def test_info(built):
    root, info = built
    assert avdigits.load_info(root) == info
    assert info["name"] == "avdigits" and info["version"] == avdigits.VERSION == "1.1.0"
    assert info["num_classes"] == avdigits.NUM_CLASSES == 10
    assert info["modalities"]["image"] == {"shape": [8, 8, 1], "dtype": "uint8"}
    assert info["modalities"]["audio"] == {"shape": [8000], "dtype": "int16", "sample_rate": 8000}
    assert set(info["splits"]) == set(avdigits.SPLITS)
    assert info["small"] is True and info["seed"] == 0 and info["build_seconds"] > 0
    assert {"espeak-ng", "flite", "scikit-learn", "asterisk"} <= set(info["sources"])
    assert info["skipped_clips"] == []
    assert not list(root.glob(".avdigits-*")), "temporary build dirs were left behind"


def test_split_sizes(built):
    _, info = built
    splits = info["splits"]
    for split in TTS_SPLITS:
        entry = splits[split]
        assert entry["num_records"] == sum(s["num_records"] for s in entry["shards"])
        # small builds say every digit once per voice
        assert entry["num_records"] == 10 * len(entry["voices"])
    assert splits["train"]["num_records"] > splits["val"]["num_records"] > 0
    languages = len(avdigits._human_dirs())
    if languages:
        human = splits["test_human"]
        assert human["num_records"] == 10 * avdigits.HUMAN_IMAGES_PER_CLIP * languages
        assert len(human["voices"]) == languages
    else:
        assert "apt-get install" in splits["test_human"]["missing"]


def _accent_counts() -> dict[str, int]:
    return {
        lang: len(accents) for lang, accents in voices.espeak_accents(avdigits.LANGUAGES).items()
    }


def _disjoint(groups: dict[str, set]) -> None:
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not groups[a] & groups[b], f"{a} and {b} share {sorted(groups[a] & groups[b])}"


def test_accents_and_variants_are_disjoint(built):
    """No accent, variant (speaker timbre) or voice of val/test is ever heard in train."""
    _, info = built
    splits = info["splits"]
    for split in TTS_SPLITS:
        espeak = [v.split(":")[1] for v in splits[split]["voices"] if v.startswith("espeak:")]
        assert splits[split]["accents"] == sorted({name.split("+")[0] for name in espeak})
        assert splits[split]["variants"] == sorted({name.split("+")[1] for name in espeak})
        assert splits[split]["accents"] and splits[split]["variants"]
    for key in ("voices", "accents", "variants"):
        _disjoint({split: set(splits[split][key]) for split in TTS_SPLITS})


def test_full_plan_is_accent_and_variant_disjoint():
    """The full build's groups, without synthesising: disjoint, complete, every language in
    train, in test when it has >= 2 accents and in val only when it has >= 3."""
    accents = voices.espeak_accents(avdigits.LANGUAGES)
    variants = voices.espeak_variants()
    rng = np.random.default_rng(0)
    accent_groups = voices.split_accents(accents, rng)
    variant_groups = voices.split_variants(variants, rng)
    codes = {s: {a.code for g in accent_groups[s].values() for a in g} for s in TTS_SPLITS}
    _disjoint(codes)
    _disjoint({s: set(variant_groups[s]) for s in TTS_SPLITS})
    assert set().union(*codes.values()) == {a.code for g in accents.values() for a in g}
    every = sorted(name for names in variants.values() for name in names)
    assert sorted(name for names in variant_groups.values() for name in names) == every
    counts = _accent_counts()
    assert set(accent_groups["train"]) == set(avdigits.LANGUAGES)
    assert set(accent_groups["test"]) == {lang for lang, n in counts.items() if n >= 2}
    assert set(accent_groups["val"]) == {lang for lang, n in counts.items() if n >= 3}
    planned = avdigits._voices(accent_groups, variant_groups, avdigits.FULL, rng)
    for split in TTS_SPLITS:
        for voice in planned[split]:
            if voice.tool == "espeak":
                accent, variant = voice.name.split("+")
                assert accent in codes[split] and variant in variant_groups[split]
        assert len({v.id for v in planned[split]}) == len(planned[split])
    clips = {s: 10 * sum(5 if v.tool == "flite" else 1 for v in planned[s]) for s in TTS_SPLITS}
    assert 2000 <= clips["train"] <= 3000 and 200 <= clips["val"] <= 500
    assert 500 <= clips["test"] <= 800, clips


def test_languages_and_notes(built):
    _, info = built
    counts = _accent_counts()
    languages = {
        split: {_language(v) for v in info["splits"][split]["voices"] if v.startswith("espeak:")}
        for split in TTS_SPLITS
    }
    assert languages["train"] == set(avdigits.LANGUAGES)
    assert languages["test"] == {lang for lang, n in counts.items() if n >= 2}
    assert languages["val"] == {lang for lang, n in counts.items() if n >= 3}
    assert any("disjoint" in note for note in info["notes"])
    if counts["it"] == 1:  # espeak-ng 1.51 has only `it`: train-only, said in the notes
        (note,) = [n for n in info["notes"] if n.startswith("Italian")]
        assert "val and test TTS have no Italian" in note and "test_human" in note
        if "human:it" in info["splits"]["test_human"]["voices"]:
            assert "test_human still has Italian recordings" in note


def test_records(built):
    root, info = built
    from sklearn.datasets import load_digits

    digits = load_digits()
    label_of_image = {
        np.round(img * 255 / 16).astype(np.uint8).tobytes(): int(y)
        for img, y in zip(digits.images, digits.target, strict=True)
    }
    for split in avdigits.SPLITS:
        if "missing" in info["splits"][split]:
            continue
        records = _records(root, split)
        assert len(records) == info["splits"][split]["num_records"]
        for r in records:
            assert set(r) == {"image", "audio", "label", "voice"}
            assert r["image"].shape == (8, 8, 1) and r["image"].dtype == np.uint8
            assert r["audio"].shape == (8000,) and r["audio"].dtype == np.int16
            assert r["label"].shape == () and r["label"].dtype == np.int64
            assert 0 <= r["label"] < 10
            assert str(r["voice"]) in info["splits"][split]["voices"]
            assert label_of_image[r["image"][..., 0].tobytes()] == r["label"]
            assert 0.85 * 32767 < np.abs(r["audio"]).max() <= 0.91 * 32767
        counts = np.bincount([int(r["label"]) for r in records], minlength=10)
        assert counts.min() > 0 and counts.max() <= 1.5 * counts.min()


def test_checksums(built, tmp_path):
    root, info = built
    avdigits.verify_checksums(root)
    shutil.copytree(root / "avdigits", tmp_path / "avdigits")
    shard = tmp_path / "avdigits" / info["splits"]["val"]["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=re.escape(shard.name)):
        avdigits.verify_checksums(tmp_path)


def test_missing_dataset_says_how_to_build(tmp_path):
    with pytest.raises(DataError, match="mmjax data prepare avdigits") as error:
        avdigits.load_info(tmp_path)
    assert "apt-get install espeak-ng flite asterisk-core-sounds-en-wav" in str(error.value)
    assert "pip install scikit-learn" in str(error.value)


def test_unknown_split(built):
    with pytest.raises(DataError, match="split"):
        avdigits.shard_paths(built[0], "training")


def test_missing_tools(monkeypatch, tmp_path):
    monkeypatch.setattr(voices.shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="apt-get install espeak-ng flite"):
        avdigits.prepare_avdigits(tmp_path, small=True, progress=False)


def test_no_human_recordings_and_failed_rebuild_keeps_old(monkeypatch, tmp_path):
    monkeypatch.setattr(avdigits, "ASTERISK_SOUNDS", tmp_path / "no-asterisk")
    info = avdigits.prepare_avdigits(tmp_path, small=True, progress=False, seed=1)
    assert "asterisk-core-sounds-ru-wav" in info["splits"]["test_human"]["missing"]
    with pytest.raises(DataError, match="asterisk-core-sounds-en-wav"):
        avdigits.shard_paths(tmp_path, "test_human")
    avdigits.verify_checksums(tmp_path)

    def fail(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(avdigits, "write_shards", fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        avdigits.prepare_avdigits(tmp_path, small=True, progress=False, seed=2)
    assert avdigits.load_info(tmp_path) == info
    assert sorted(p.name for p in tmp_path.iterdir()) == ["avdigits"]


def test_record_roundtrip_and_corruption():
    record = {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "s": np.array("human:fr")}
    decoded = decode_record(encode_record(record))
    assert decoded["a"].dtype == np.int16 and np.array_equal(decoded["a"], record["a"])
    assert str(decoded["s"]) == "human:fr"
    with pytest.raises(DataError, match="corrupt record"):
        decode_record(b"not a record")
    with pytest.raises(DataError, match="'o'"):
        encode_record({"o": np.array([{}], dtype=object)})


def test_read_wav_rejects_non_wav(tmp_path):
    path = tmp_path / "clip.wav"
    path.write_bytes(b"ID3 this is an mp3")
    with pytest.raises(InputError, match="PCM WAV") as error:
        audio_io.read_wav(path)
    assert str(path) in str(error.value)
    with pytest.raises(InputError, match="PCM WAV"):
        audio_io.read_wav(tmp_path / "missing.wav")


def _pcm(x: np.ndarray, width: int) -> bytes:
    """Floats in [-1, 1] -> little-endian PCM bytes of `width` bytes (8-bit is unsigned)."""
    if width == 1:
        return np.round(x * 127 + 128).astype(np.uint8).tobytes()
    ints = np.round(x * (2 ** (8 * width - 1) - 1)).astype("<i4")
    return ints.view(np.uint8).reshape(-1, 4)[:, :width].tobytes()


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_read_wav_pcm_widths(tmp_path, width):
    mono = np.array([0.0, 0.5, -0.5, 0.7])
    stereo = np.stack([mono + 0.25, mono - 0.25], axis=1)  # channels average to `mono`
    with wave.open(str(tmp_path / "x.wav"), "wb") as f:
        f.setnchannels(2)
        f.setsampwidth(width)
        f.setframerate(11025)
        f.writeframes(_pcm(stereo.ravel(), width))
    samples, rate = audio_io.read_wav(tmp_path / "x.wav")
    assert rate == 11025 and samples.dtype == np.float32 and samples.shape == (4,)
    np.testing.assert_allclose(samples, mono, atol=1 / 64)


def test_prepare_waveform_length_rate_and_peak():
    rate = 22050
    speech = np.concatenate([np.zeros(rate // 2), _tone(440, rate, 0.3), np.zeros(rate)])
    out = audio_io.prepare_waveform(speech, rate)
    assert out.shape == (8000,) and out.dtype == np.float32
    assert np.isclose(np.abs(out).max(), 0.9, atol=1e-3)
    loud = np.flatnonzero(np.abs(out) > 0.1)
    assert abs((loud[0] + loud[-1]) / 2 - 4000) < 100, "speech is centred after trimming"
    assert loud[-1] - loud[0] == pytest.approx(0.3 * 8000, abs=100), "0.3 s stays 0.3 s"
    long = audio_io.prepare_waveform(_tone(300, 16000, 3.0), 16000, length=4000)
    assert long.shape == (4000,)
    assert not audio_io.prepare_waveform(np.zeros(9000), 8000).any()
    with pytest.raises(InputError):
        audio_io.prepare_waveform(np.full(100, np.nan), 8000)


def test_to_model_rate_band_limits():
    """A 6 kHz tone cannot exist at 8 kHz; it must vanish rather than alias to 2 kHz."""
    high = audio_io.to_model_rate(_tone(6000, 16000, 1.0), 16000)
    low = audio_io.to_model_rate(_tone(1000, 16000, 1.0), 16000)
    assert high.shape == low.shape == (8000,)
    inner = slice(200, -200)  # away from the filter's edge transients
    assert np.sqrt(np.mean(low[inner] ** 2)) == pytest.approx(np.sqrt(0.5), rel=0.02)
    assert np.sqrt(np.mean(high[inner] ** 2)) < 1e-2


def test_build_of_another_version_is_refused(built, tmp_path):
    built_root, _ = built
    import json
    import shutil

    root = tmp_path / "old"
    shutil.copytree(built_root, root)
    info_path = root / "avdigits" / "info.json"
    info = json.loads(info_path.read_text())
    info["version"] = "0.9.0"
    info_path.write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"version 0\.9\.0.*mmjax data prepare avdigits"):
        avdigits.load_info(root)
