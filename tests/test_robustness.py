"""Robustness curves: each corruption does what it says, deterministically; the summaries follow
MultiBench's definitions; a masked-out modality's corruption changes nothing."""

import numpy as np
import pytest

import mmjax
from mmjax import robustness
from mmjax.corruptions import CORRUPTIONS, LEVELS
from mmjax.data import pipeline

B = 4
WORDS = {"tokenizer": "words", "length": 6, "tokens": ["[PAD]", "[UNK]", "a", "red", "dress"]}
DATASET = {"text_vocab": WORDS}


def batches() -> dict[str, dict[str, np.ndarray]]:
    """A batch of each input kind, as the pipeline yields it."""
    rng = np.random.default_rng(0)
    ids = np.array([[2, 3, 4, 0, 0, 0], [3, 4, 2, 3, 4, 2], [4, 0, 0, 0, 0, 0], [2, 2, 3, 4, 1, 0]])
    return {
        "image": {"image": rng.random((B, 16, 12, 3), np.float32)},
        "audio": {"audio": rng.standard_normal((B, 4000)).astype(np.float32)},
        "video": {"video": rng.random((B, 5, 8, 8, 3), np.float32)},
        "text": {"text": ids.astype(np.int32), "text.attention_mask": ids != 0},
    }


def apply(kind: str, name: str, level: int, seed: int = 0) -> dict[str, np.ndarray]:
    corruption = CORRUPTIONS[kind][name]
    batch = batches()[kind]
    out = corruption.apply(
        batch, kind, corruption.values[level], np.random.default_rng(seed), DATASET
    )
    for key, x in batches()[kind].items():  # the input is left as it was
        np.testing.assert_array_equal(batch[key], x)
    return out


ALL = [(kind, name) for kind in CORRUPTIONS for name in CORRUPTIONS[kind]]


@pytest.mark.parametrize(("kind", "name"), ALL)
def test_every_corruption_keeps_shape_and_dtype_and_is_seeded(kind, name):
    corruption = CORRUPTIONS[kind][name]
    assert len(corruption.values) == LEVELS
    clean = batches()[kind]
    for level in (1, 5, LEVELS - 1):
        out = apply(kind, name, level)
        for key, x in clean.items():
            assert out[key].shape == x.shape and out[key].dtype == x.dtype, (key, level)
        again = apply(kind, name, level)
        for key in clean:
            np.testing.assert_array_equal(out[key], again[key])
    # Level 5 changes the input, and another seed changes it differently.
    mid, other = apply(kind, name, 5), apply(kind, name, 5, seed=1)
    assert any(not np.array_equal(mid[k], clean[k]) for k in clean)
    if name != "blur":  # the only corruption without randomness
        assert any(not np.array_equal(mid[k], other[k]) for k in clean)


def test_image_and_video_corruptions_at_their_strongest():
    assert np.all(apply("image", "occlusion", LEVELS - 1)["image"] == 0.5)
    noisy = apply("image", "gaussian_noise", LEVELS - 1)["image"]
    assert noisy.min() >= 0 and noisy.max() <= 1
    blurred, clean = apply("image", "blur", LEVELS - 1)["image"], batches()["image"]["image"]
    assert blurred.std(axis=(1, 2)).mean() < 0.3 * clean.std(axis=(1, 2)).mean()
    assert np.all(apply("video", "dropped_frames", LEVELS - 1)["video"] == 0)
    stalled = apply("video", "repeated_frames", LEVELS - 1)["video"]
    np.testing.assert_array_equal(stalled, np.repeat(stalled[:, :1], 5, axis=1))
    np.testing.assert_array_equal(stalled[:, 0], batches()["video"]["video"][:, 0])
    # Occlusion of a video: one rectangle per clip, the same in every frame.
    occluded = apply("video", "occlusion", 5)["video"] == 0.5
    assert np.all(occluded == occluded[:, :1])
    share = occluded[:, 0].all(-1).mean(axis=(1, 2))
    np.testing.assert_allclose(share, 5 / 9, atol=0.1)


def test_audio_corruptions_hit_their_parameter():
    clean = batches()["audio"]["audio"]
    for level in (3, 7):
        snr = CORRUPTIONS["audio"]["white_noise"].values[level]
        noise = apply("audio", "white_noise", level)["audio"] - clean
        measured = 10 * np.log10(np.mean(clean**2, -1) / np.mean(noise**2, -1))
        np.testing.assert_allclose(measured, snr, atol=0.3)
    masked = apply("audio", "time_mask", 5)["audio"]
    silent = (masked == 0) & (clean != 0)
    np.testing.assert_array_equal(silent.sum(-1), round(5 / 9 * clean.shape[-1]))
    assert np.all(apply("audio", "time_mask", LEVELS - 1)["audio"] == 0)


def test_text_corruptions_go_through_the_tokenizer():
    gone = apply("text", "word_dropout", LEVELS - 1)
    assert not gone["text"].any() and not gone["text.attention_mask"].any()
    typos = apply("text", "typos", LEVELS - 1)
    clean = batches()["text"]
    real = clean["text.attention_mask"]
    # Every word misspelt: none of the three-word vocabulary survives (a slip can drop a
    # one-letter word's only letter, which removes the word).
    assert not np.isin(typos["text"][typos["text.attention_mask"]], [2, 3, 4]).any()
    assert typos["text.attention_mask"].sum() <= real.sum()
    assert typos["text"][3, 4] == 1  # [UNK] stays unknown


def test_relative_and_effective_robustness_follow_multibench():
    assert robustness.relative_robustness([0.8] * LEVELS) == pytest.approx(0.8)
    assert robustness.relative_robustness(np.linspace(1, 0, LEVELS)) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    f, r = rng.random(LEVELS), rng.random(LEVELS)
    # MultiBench: sum_i f_i - (r_i + (f_0 - r_0)); here averaged over the levels.
    expected = sum(f[i] - (r[i] + (f[0] - r[0])) for i in range(LEVELS)) / LEVELS
    assert robustness.effective_robustness(f, r) == pytest.approx(expected)
    assert robustness.effective_robustness(f, f) == pytest.approx(0.0)
    with pytest.raises(mmjax.ConfigError, match="levels"):
        robustness.effective_robustness(f, r[:5])


@pytest.fixture(scope="module")
def late():
    return mmjax.load_pretrained("avdigits-late")


def test_masked_out_modality_corruptions_change_nothing(late, avdigits_root):
    exp = late.experiment
    data = exp.data.__class__(**{**exp.data.__dict__, "root": str(avdigits_root)})
    batch, _ = next(pipeline.eval_batches(data, late.modalities, "test", 64))
    for m in late.modalities:
        without = {**batch, f"{m}_mask": np.zeros_like(batch[f"{m}_mask"])}
        reference = late.batch_proba(without)
        for name, corruption in CORRUPTIONS[m].items():
            rng = np.random.default_rng(0)
            corrupted = corruption.apply(without, m, corruption.values[-1], rng, late.dataset)
            assert not np.array_equal(corrupted[m], without[m]), name
            np.testing.assert_array_equal(late.batch_proba(corrupted), reference, err_msg=name)


def test_same_seed_same_curves(late, avdigits_root):
    def once():
        return robustness.measure(
            late, "test", seed=3, levels=[0, 4, 9], data_root=str(avdigits_root),
            corruptions=["white_noise", "image:occlusion"],
        )  # fmt: skip

    first = once()
    assert first == once()
    assert [(c["modality"], c["corruption"]) for c in first["curves"]] == [
        ("audio", "white_noise"),
        ("image", "occlusion"),
    ]
    assert all(
        len(c["accuracy"]) == 3 and c["relative_robustness"] is None for c in first["curves"]
    )
    assert first["clean"] == late.evaluate("test", data_root=str(avdigits_root))["accuracy"]


def test_unknown_corruptions_and_levels_are_refused(late):
    with pytest.raises(mmjax.ConfigError, match=r"--corruptions.*image:blur"):
        robustness.corruption_plan(late, ["text:typos"])
    with pytest.raises(mmjax.ConfigError, match="--corruptions"):
        robustness.corruption_plan(late, ["audio:blur"])
    with pytest.raises(mmjax.ConfigError, match=r"--levels: \[10\]"):
        robustness.check_levels([3, 10])
    assert robustness.check_levels([9, 3]) == (0, 3, 9)


def test_text_read_back_and_tokenised_again_is_unchanged():
    """Level 1+ text corruptions edit words read back from ids; without an edit the round trip
    gives the ids back, for a word vocabulary and for a catalog (WordPiece) tokenizer."""
    from mmjax.data.inputs import text_words, tokenize_texts, words_to_ids

    texts = ["A red dress, unknown words", "dress", ""]
    for dataset in (DATASET, {"text_vocab": {"tokenizer": "minilm-l6", "length": 12}}):
        ids, mask = tokenize_texts(dataset, texts)
        again = words_to_ids(dataset, text_words(dataset, ids, mask))
        np.testing.assert_array_equal(again[0], ids)
        np.testing.assert_array_equal(again[1], mask)
