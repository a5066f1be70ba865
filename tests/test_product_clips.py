"""Product clips: a small build through the real MP4 + import path, its seed config, the
missing-stream rules, and prediction on an MP4 and a title."""

import csv
import functools
import json

import av
import numpy as np
import pytest

import mmjax
from mmjax.data.builders import product_clips
from mmjax.data.builders.clip_media import render_frames, write_clip
from mmjax.data.sources import open_source
from mmjax.pretrained.word_vectors import word_vectors


@pytest.fixture(scope="module")
def clips_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    product_clips.prepare_product_clips(root, small=True, progress=False)
    return root


def _manifest(root):
    with (root / product_clips.FILES / "manifest.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _streams(path):
    with av.open(str(path)) as container:
        return [s.codec_context.name for s in container.streams]


def test_small_build_is_mp4_clips_imported_with_their_modalities(clips_root):
    source = open_source(mmjax.config.DataConfig(name="product-clips", root=str(clips_root)))
    source.verify()
    info = source.info
    rows = _manifest(clips_root)
    sizes = product_clips.SMALL.clips
    assert {s: info["splits"][s]["num_records"] for s in sizes} == sizes
    assert len(rows) == sum(sizes.values())
    # every class equally often in every split
    for split, entry in info["splits"].items():
        assert set(entry["class_counts"].values()) == {sizes[split] // 10}
    # real H.264 + AAC files; a clip without a voice-over has no audio stream at all
    streams = [_streams(clips_root / product_clips.FILES / r["video"]) for r in rows]
    assert all(s[0] == "h264" for s in streams)
    silent = sum(s == ["h264"] for s in streams)
    assert all(s == ["h264", "aac"] for s in streams if len(s) == 2)
    assert 0 < silent < len(rows)
    modalities = info["modalities"]
    assert modalities["audio"]["from"] == "video" and modalities["audio"]["missing"] == silent
    assert modalities["text"]["missing"] == sum(not r["title"] for r in rows) > 0
    assert modalities["video"]["shape"] == [8, 32, 32, 3]
    assert info["class_names"] == list(product_clips.CLASSES)
    # held-out splits never reuse a voice heard in training
    voices = {s: set(v) for s, v in info["voices"].items()}
    assert not voices["train"] & (voices["val"] | voices["test"])
    assert info["version"] == product_clips.VERSION and info["build"]["seed"] == 0


def test_titles_name_the_group_and_the_word_vectors_are_minilm(clips_root):
    rows = _manifest(clips_root)
    groups = [
        {
            w
            for offset, lemma in synsets
            for w in product_clips.wordnet.synset_words("noun", offset, lemma)
        }
        for synsets in product_clips.GROUP_SYNSETS
    ]
    for row in rows:
        group = product_clips.GROUP_OF[product_clips.CLASSES.index(row["label"])]
        words = set(row["title"].split())
        assert not row["title"] or words & groups[group], row
    built = clips_root / product_clips.NAME
    lines = (built / product_clips.WORD_VECTORS).read_text(encoding="utf-8").splitlines()
    vectors = {line.split()[0]: np.array(line.split()[1:], np.float32) for line in lines}
    word = next(w for w in vectors if w.isalpha() and len(w) > 3)
    np.testing.assert_allclose(vectors[word], word_vectors([word])[0], rtol=1e-5, atol=1e-6)
    assert len(vectors[word]) == product_clips.WORD_VECTOR_DIM


def test_a_rebuild_writes_the_same_shards(clips_root, tmp_path):
    again = product_clips.prepare_product_clips(tmp_path, small=True, progress=False)
    first = json.loads((clips_root / product_clips.NAME / "info.json").read_text())
    shards = lambda info: {s: e["shards"] for s, e in info["splits"].items()}
    assert shards(again) == shards(first)


def test_seed_config_builds_resnet50_frames_and_trains_a_few_steps(
    clips_root, monkeypatch, tmp_path
):
    monkeypatch.setenv("MMJAX_DATA", str(clips_root))
    cfg = mmjax.load_config_file("configs/clips_seed.py:tiny")
    encoders = cfg.model.encoders
    assert (encoders.video.frame_encoder, encoders.video.temporal) == ("resnet50", "lstm")
    assert encoders.text.name == "bilstm" and encoders.audio.name == "cnn_lstm"
    assert cfg.model.fusion.name == "late_concat" and cfg.optim.weight_decay == 0
    mmjax.set_value(cfg, "train.log_every", 1)
    mmjax.train(cfg, tmp_path / "run", stop_after=1, progress=False)
    (row,) = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert row["step"] == 1 and np.isfinite(row["loss"])


def _clip(path, audio: bool):
    frames = render_frames(
        np.full((28, 28), 200, np.uint8), product_clips.MOTION, np.random.default_rng(0)
    )
    wave = (np.sin(np.arange(16000) / 5) * 8000).astype(np.int16) if audio else None
    write_clip(path, frames, 4, wave, 8000)


def _audio_only(path):
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=8000)
        stream.layout = "mono"
        chunk = av.AudioFrame.from_ndarray(
            np.zeros((1, 8000), np.int16), format="s16", layout="mono"
        )
        chunk.sample_rate = 8000
        out.mux(stream.encode(chunk))
        out.mux(stream.encode())


def test_missing_streams_are_masked_or_row_problems(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    rows = []
    for i in range(6):
        _clip(clips / f"{i}.mp4", audio=i % 3 != 0)
        rows.append({"video": f"clips/{i}.mp4", "label": "ab"[i % 2]})
    _audio_only(clips / "sound.mp4")
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["video", "label"])
        writer.writeheader()
        writer.writerows([*rows, {"video": "clips/sound.mp4", "label": "a"}])
    settings = dict(image_size=16, frames=4, sample_rate=8000, audio_seconds=1.0, val=0.0, test=0.0)
    data = str(tmp_path / "data")
    with pytest.raises(
        mmjax.DataError, match=r"m.csv row 7, column video .*sound.mp4.*video stream"
    ):
        mmjax.data.import_manifest("c", manifest, data_dir=data, progress=False, **settings)
    info = mmjax.data.import_manifest(
        "c", manifest, data_dir=data, progress=False, on_error="skip", **settings
    )
    assert info["skipped_rows"] == 1 and info["modalities"]["audio"]["missing"] == 2
    with pytest.raises(mmjax.DataError, match=r"row 1, column video .*0.mp4.*no audio track"):
        mmjax.data.import_manifest(
            "c2", manifest, data_dir=data, progress=False, require=("audio",), **settings
        )


def test_pretrained_branch_caches_imagenet_frame_features(clips_root, monkeypatch, tmp_path):
    """Frozen EfficientNet-Lite0 frames (catalog weights in the video encoder's frame encoder)
    cached with `features extract`, with the dataset's words vocabulary for prediction.
    (Training on a store: tests/test_features.py; on these frames: the published model.)"""
    from flax import nnx

    from mmjax.data.features_store import open_store
    from mmjax.data.records import decode_record
    from mmjax.features import extract
    from mmjax.models import build_model
    from mmjax.models.layers import jit_init
    from mmjax.pretrained import load_encoder, place_pretrained

    monkeypatch.setenv("MMJAX_DATA", str(clips_root))
    cfg = mmjax.load_config_file("configs/clips_seed.py:tiny")
    for key, value in {
        "model.encoders.video.frame_encoder": "efficientnet_lite0",
        "model.encoders.video.temporal": "mean",
        "model.pretrained.video": "efficientnet-lite0",
        "model.frozen": ("video",),
    }.items():
        mmjax.set_value(cfg, key, value)
    model_cfg = mmjax.model_config_from(cfg.model)
    model = jit_init(lambda: build_model(model_cfg, rngs=nnx.Rngs(0)))
    place_pretrained(model, model_cfg)
    frames, catalog = model.encoders["video"].frames, load_encoder("efficientnet-lite0")
    np.testing.assert_array_equal(frames.head.conv.kernel[...], catalog.head.conv.kernel[...])
    out = tmp_path / "frames"
    extract(cfg, out, splits=("test",))
    store = open_store(out)
    source = open_source(mmjax.config.DataConfig(name="product-clips", root=str(clips_root)))
    assert store.description()["text_vocab"] == source.description()["text_vocab"]
    assert store.info["cached"]["video"]["pretrained"] == "efficientnet-lite0"
    assert decode_record(store.open_split("test")[0])["video.pooled"].shape == (1280,)


PUBLISHED = [n for n in mmjax.publish.published_names() if n.startswith("product-clips")]


@functools.cache
def _published(name: str):
    """Loaded once per test file: loading builds the model and its EfficientNet frames."""
    return mmjax.load_pretrained(name)


def test_a_product_clips_model_is_published():
    assert PUBLISHED


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_card_reproduces_on_a_fresh_small_build(name, clips_root):
    """The card records the model's accuracy on the `--small` build too (tools/publish.py
    --small-build); a fresh small build has its checksums and gives exactly those numbers."""
    published = _published(name)
    small = published.card["small_build"]
    source = open_source(mmjax.config.DataConfig(name="product-clips", root=str(clips_root)))
    assert source.build_checksums()["shards"] == small["dataset_build"]["shards"]
    for split, accuracy in small["accuracy"].items():
        assert published.evaluate(split, data_root=str(clips_root))["accuracy"] == accuracy
    assert published.card["metrics"]["accuracy"]["test"] >= 0.8  # on the full build


@pytest.mark.parametrize("name", PUBLISHED[:1])
def test_predict_takes_an_mp4_and_a_title(name, clips_root, capsys):
    from mmjax.cli import main

    published = _published(name)
    rows = [r for r in _manifest(clips_root) if r["title"]]
    folder = clips_root / product_clips.FILES
    streams = {r["video"]: _streams(folder / r["video"]) for r in rows}
    sounding = next(r for r in rows if len(streams[r["video"]]) == 2)
    silent = next(r for r in rows if len(streams[r["video"]]) == 1)
    probs = published.predict_proba(video=str(folder / sounding["video"]), text=sounding["title"])
    assert probs.shape == (10,) and abs(probs.sum() - 1) < 1e-5
    with pytest.warns(UserWarning, match=r"no audio track; predicting with the audio modality"):
        (label,) = published.predict(video=[str(folder / silent["video"])], text=[silent["title"]])
    assert label in product_clips.CLASSES
    argv = ["predict", "--model", name, "--video", str(folder / silent["video"])]
    assert main([*argv, "--text", silent["title"], "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["prediction"] == label
    assert "note: video" in err and "no audio track" in err
    assert main(["predict", "--video", str(folder / silent["video"])]) == 2
    assert "--workdir RUN" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("module", "attribute", "install"),
    [
        (product_clips, "FASHION_MNIST", "apt-get install dataset-fashion-mnist"),
        (product_clips.wordnet, "WORDNET_DIR", "apt-get install wordnet-base"),
    ],
)
def test_missing_sources_name_the_apt_line(module, attribute, install, monkeypatch, tmp_path):
    monkeypatch.setattr(module, attribute, tmp_path / "absent")
    with pytest.raises(mmjax.DataError, match=install):
        product_clips.prepare_product_clips(tmp_path / "data", small=True, progress=False)
    assert not (tmp_path / "data" / product_clips.NAME).exists()
