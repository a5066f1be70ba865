"""Your own data: manifests, folders and Hugging Face datasets imported from real files made
here (scikit-learn digits, Asterisk's recorded digits, clips encoded with PyAV), trained on with
a chosen model, predicted on from raw files; broken rows, kill -9 and bad arguments."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grain
import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from sklearn.datasets import load_digits

import mmjax
from mmjax import cli
from mmjax.config import DataConfig
from mmjax.data.imports.splits import assign_splits
from mmjax.data.records import decode_record
from mmjax.data.sources import open_source
from tests.media_files import digit_recording, pan_frames, write_clip

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ROWS = 60
SETTINGS = {"sample_rate": 8000, "audio_seconds": 1.0, "image_size": 16, "frames": 4}
SETTINGS |= {"text_length": 6, "progress": False}


def _write_files(d: Path) -> list[dict[str, str]]:
    """ROWS manifest rows over real files: a digit image (PNG or JPEG), its spoken digit (WAV or
    FLAC), a clip (MP4 with sound, or WebM without), a text; some cells left empty."""
    digits = load_digits()
    frames = pan_frames()
    clips = []
    for k in range(3):
        wave, rate = digit_recording(k + 1)
        clips.append(write_clip(d / f"clip{k}.mp4", frames[k::2], 10, audio=wave, sample_rate=rate))
    clips.append(write_clip(d / "silent.webm", frames[::3], 10))
    rows = []
    for i in range(ROWS):
        label = int(digits.target[i])
        pixels = (digits.images[i] * 255 / 16).astype(np.uint8)
        image = Image.fromarray(pixels).convert("RGB").resize((24, 24))
        image_name = f"img{i}.png" if i % 2 else f"img{i}.jpg"
        image.save(d / image_name)
        wave, rate = digit_recording(label)
        audio_name = f"say{i}.wav" if i % 3 else f"say{i}.flac"
        sf.write(d / audio_name, wave, rate)
        rows.append(
            {
                "image": "" if i % 10 == 3 else image_name,  # relative to the manifest
                "audio": str((d / audio_name).absolute()),
                "video": clips[i % len(clips)].name,
                "text": "" if i % 6 == 0 else f"spoken {WORDS[label]} w{i}",
                "category": WORDS[label],
                "speaker": f"s{i % 12}",
            }
        )
    return rows


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, list[dict[str, str]]]:
    d = tmp_path_factory.mktemp("clips")
    rows = _write_files(d)
    return _write_csv(d / "clips.csv", rows), rows


@pytest.fixture(scope="module")
def imported(files, tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    manifest, rows = files
    info = mmjax.data.import_manifest(
        "clips", manifest, label="category", group_by="speaker", data_dir=str(root), **SETTINGS
    )
    return root, info, rows


def _records(root: Path, name: str) -> dict[str, list[dict[str, np.ndarray]]]:
    source = open_source(DataConfig(name=name, root=str(root)))
    return {
        split: [decode_record(r) for r in source.open_split(split)]
        for split in source.info["splits"]
    }


def test_manifest_import_records_and_info(imported):
    root, info, rows = imported
    assert info["class_names"] == sorted(WORDS)  # names kept, in sorted order
    assert set(info["modalities"]) == {"image", "audio", "video", "text"}
    assert info["modalities"]["video"]["shape"] == [4, 16, 16, 3]
    assert info["modalities"]["image"]["missing"] == sum(r["image"] == "" for r in rows)
    assert info["modalities"]["text"]["missing"] == sum(r["text"] == "" for r in rows)
    assert sum(s["num_records"] for s in info["splits"].values()) == ROWS
    records = _records(root, "clips")
    speakers = {}
    for split, split_records in records.items():
        for record in split_records:
            row = rows[int(record["source_row"])]
            assert info["class_names"][int(record["label"])] == row["category"]
            assert bool(record["image_mask"]) == (row["image"] != "")
            assert bool(record["text_mask"]) == (row["text"] != "")
            assert record["image"].dtype == np.uint8 and record["audio"].shape == (8000,)
            speakers.setdefault(row["speaker"], set()).add(split)
    assert all(len(splits) == 1 for splits in speakers.values())  # --group-by
    assert len(speakers) == 12
    # the words vocabulary holds train words only: each row's own word w<i> marks it
    vocab = (root / "clips" / "vocab.txt").read_text().split("\n")
    for split, split_records in records.items():
        for record in split_records:
            own = f"w{int(record['source_row'])}"
            text = rows[int(record["source_row"])]["text"]
            assert (own in vocab) == (split == "train" and text != ""), (split, own)
    assert json.loads((root / "clips" / "import_report.json").read_text())["problems"] == []
    assert info["source"]["settings"] == {"label": "category", "group_by": "speaker", "map": {}}
    open_source(DataConfig(name="clips", root=str(root))).verify()


def test_same_rows_from_jsonl_and_parquet_give_the_same_shards(imported, files, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, info, rows = imported
    manifest = files[0]
    jsonl = manifest.with_suffix(".jsonl")
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parquet = manifest.with_suffix(".parquet")
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    for path in (jsonl, parquet):
        other = mmjax.data.import_manifest(
            path.suffix[1:], path, label="category", group_by="speaker", data_dir=str(tmp_path),
            **SETTINGS,
        )  # fmt: skip
        for split, entry in info["splits"].items():
            assert [s["sha256"] for s in other["splits"][split]["shards"]] == [
                s["sha256"] for s in entry["shards"]
            ]


def test_splits_are_stratified_seeded_and_keep_groups():
    labels = [str(i % 4) for i in range(200)]
    splits = assign_splits(labels, None, val=0.1, test=0.2, seed=0)
    for c in "0123":
        counts = {s: sum(x == s and y == c for x, y in zip(splits, labels)) for s in splits}
        assert counts == {"train": 35, "val": 5, "test": 10}
    assert assign_splits(labels, None, val=0.1, test=0.2, seed=0) == splits
    assert assign_splits(labels, None, val=0.1, test=0.2, seed=1) != splits
    groups = [str(i % 40) for i in range(200)]
    grouped = assign_splits(labels, groups, val=0.1, test=0.2, seed=0)
    for g in set(groups):
        assert len({s for s, x in zip(grouped, groups) if x == g}) == 1
    assert 0.55 <= grouped.count("train") / 200 <= 0.85 and grouped.count("test") >= 20


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_on_imported_data_and_predict_from_raw_files(imported, files, capsys, tmp_path):
    root, _, rows = imported
    workdir = tmp_path / "run"
    code, out, err = _run(
        capsys, "train", "--data", "clips", "--workdir", str(workdir), "--data-dir", str(root),
        "--set", "train.steps=2", "--set", "train.eval_splits=test", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert "video: video" in out and "text: bilstm" in out and "image: small_cnn" in out
    results = json.loads(out[out.index("{") :])
    assert results["completed"] and list(results["accuracy"]) == ["test"]
    chosen = mmjax.load_config_file(str(workdir / "config.py"))
    assert chosen.model.num_classes == 10 and chosen.data.name == "clips"
    assert chosen.train.steps == 2 and chosen.optim.warmup_steps == 0  # --set in the file
    folder = files[0].parent
    row = rows[1]
    code, out, err = _run(
        capsys, "predict", "--workdir", str(workdir), "--image", str(folder / row["image"]),
        "--audio", row["audio"], "--video", str(folder / row["video"]), "--text", row["text"],
        "--json",
    )  # fmt: skip
    assert code == 0, err
    answer = json.loads(out)
    assert set(answer["probabilities"]) == set(WORDS) and answer["prediction"] in WORDS
    predictor = mmjax.load_predictor(workdir)
    many = {
        "image": [str(folder / rows[i]["image"]) for i in (1, 2)],
        "text": [rows[1]["text"], None],  # None: missing for that sample
        "video": [(folder / rows[i]["video"]).read_bytes() for i in (1, 2)],
    }
    probs = predictor.predict_proba(**many)
    assert probs.shape == (2, 10)
    assert predictor.predict(**many) == [predictor.class_names[k] for k in probs.argmax(1)]
    first = predictor.predict_proba(
        image=many["image"][0], text=rows[1]["text"], video=many["video"][0]
    )
    np.testing.assert_allclose(first, probs[0], atol=1e-5)
    code, _, err = _run(capsys, "predict", "--workdir", str(workdir), "--image", "absent.png")
    assert code == 2 and "absent.png" in err


def test_audio_comes_from_the_clip_when_the_data_has_no_audio_column(files, tmp_path):
    folder = files[0].parent
    rows = [
        {"video": name, "label": label}
        for name, label in (("clip0.mp4", "a"), ("silent.webm", "a"), ("clip1.mp4", "b"))
    ]
    manifest = _write_csv(folder / "videos.csv", rows * 3)
    info = mmjax.data.import_manifest(
        "videos", manifest, data_dir=str(tmp_path), val=0.0, test=0.0, **SETTINGS
    )
    audio = info["modalities"]["audio"]
    assert audio["from"] == "video" and audio["missing"] == 3 and audio["shape"] == [8000]
    (train,) = _records(tmp_path, "videos")["train"][:1]
    assert train["video"].shape == (4, 16, 16, 3)


def _broken_manifest(folder: Path, rows: list[dict[str, str]]) -> Path:
    (folder / "cut.png").write_bytes((folder / rows[1]["image"]).read_bytes()[:60])
    sf.write(folder / "empty.wav", np.zeros(0, np.float32), 8000)
    bad = [dict(r) for r in rows[:20]]
    bad[2]["image"] = "does-not-exist.png"
    bad[4]["image"] = "cut.png"
    bad[5]["audio"] = str(folder / "empty.wav")
    bad[7]["category"] = ""
    bad[8] |= {"image": "", "audio": "", "video": "", "text": ""}
    return _write_csv(folder / "broken.csv", bad)


def test_broken_rows_fail_the_import_or_are_skipped(files, tmp_path):
    folder = files[0].parent
    manifest = _broken_manifest(folder, files[1])
    good = mmjax.data.import_manifest(
        "broken", files[0], data_dir=str(tmp_path), label="category", **SETTINGS
    )
    with pytest.raises(mmjax.DataError) as error:
        mmjax.data.import_manifest(
            "broken", manifest, data_dir=str(tmp_path), label="category", overwrite=True,
            **SETTINGS,
        )  # fmt: skip
    message = str(error.value)
    assert "5 row(s) cannot be imported" in message and "nothing was built" in message
    for expected in (
        "broken.csv row 3, column image (",
        "does-not-exist.png): file does not exist",
        "broken.csv row 5, column image (",
        "broken.csv row 6, column audio (",
        "holds no samples",
        "broken.csv row 8, column label: empty label",
        "broken.csv row 9, column row: no modality",
    ):
        assert expected in message
    report = json.loads((tmp_path / "broken.import_report.json").read_text())
    assert report["problem_rows"] == 5 and len(report["problems"]) == 5
    assert json.loads((tmp_path / "broken" / "info.json").read_text()) == good  # untouched
    skipped = mmjax.data.import_manifest(
        "broken", manifest, data_dir=str(tmp_path), label="category", overwrite=True,
        on_error="skip", **SETTINGS,
    )  # fmt: skip
    assert skipped["skipped_rows"] == 5
    assert not (tmp_path / "broken.import_report.json").exists()  # the failure's, now stale
    assert (
        len(json.loads((tmp_path / "broken" / "import_report.json").read_text())["problems"]) == 5
    )
    assert sum(s["num_records"] for s in skipped["splits"].values()) == 15
    with pytest.raises(mmjax.DataError, match=r"exists.*--overwrite"):
        mmjax.data.import_manifest(
            "broken", manifest, data_dir=str(tmp_path), label="category", **SETTINGS
        )


def test_folder_import_with_split_folders_and_shared_stems(files, tmp_path):
    folder = files[0].parent
    root = tmp_path / "photos"
    for split, indices in (("train", range(0, 8)), ("test", range(8, 12))):
        for i in indices:
            row = files[1][i]
            if not row["image"]:
                continue
            target = root / split / row["category"]
            target.mkdir(parents=True, exist_ok=True)
            (target / f"x{i}.png").write_bytes((folder / row["image"]).read_bytes())
            (target / f"x{i}.txt").write_text(f"caption {i}\n")
    (root / "train" / files[1][0]["category"] / "notes.xyz").write_text("?")
    data = tmp_path / "data"
    with pytest.raises(mmjax.DataError, match=r"notes\.xyz: unsupported file type '\.xyz'"):
        mmjax.data.import_folder("photos", root, data_dir=str(data), **SETTINGS)
    assert not (data / "photos").exists()
    info = mmjax.data.import_folder("photos", root, data_dir=str(data), on_error="skip", **SETTINGS)
    assert set(info["modalities"]) == {"image", "text"} and info["skipped_rows"] >= 1
    test_classes = set(info["splits"]["test"]["class_counts"])
    assert test_classes <= set(info["splits"]["train"]["class_counts"])  # no untrained class
    records = _records(data, "photos")
    assert all(r["text_mask"] for split in records.values() for r in split)


def test_hugging_face_imagefolder_import(files, tmp_path, capsys):
    folder = files[0].parent
    root = tmp_path / "hf"
    for i, row in enumerate(files[1][:12]):
        if row["image"]:
            (root / "train" / row["category"]).mkdir(parents=True, exist_ok=True)
            target = root / "train" / row["category"] / f"{i}.png"
            target.write_bytes((folder / row["image"]).read_bytes())
    code, out, err = _run(
        capsys, "data", "import", "faces", "--hf", str(root), "--map", "image=image,label=label",
        "--data-dir", str(tmp_path / "data"), "--image-size", "16", "--val", "0", "--test", "0",
    )  # fmt: skip
    assert code == 0, err
    code, out, err = _run(capsys, "data", "list", "--data-dir", str(tmp_path / "data"), "--json")
    (row,) = json.loads(out)
    assert row["name"] == "faces" and row["kind"] == "imported" and row["modalities"] == ["image"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--manifest", "{csv}", "--label", "nope"], "--label: clips.csv has no column 'nope'"),
        (["--manifest", "{csv}", "--map", "text=title,label=category"], "--map text=title: clips"),
        (["--manifest", "{csv}", "--map", "smell=text"], "--map"),
        (["--manifest", "{dir}/nothing.csv", "--image-size", "2"], "--image-size must be >= 8"),
        (["--manifest", "{dir}/nothing.csv"], "does not exist"),
        (["--folder", "{csv}"], "is not a directory"),
        (["--tfds", "mnist"], "--tfds and --hf need --map"),
        (["--manifest", "{csv}", "--label", "category", "--require", "smell"], "--require"),
    ],
)
def test_bad_import_arguments_exit_2_with_one_line(files, tmp_path, capsys, argv, message):
    csv_path = files[0]
    argv = [a.format(csv=csv_path, dir=csv_path.parent) for a in argv]
    code, _, err = _run(capsys, "data", "import", "x", *argv, "--data-dir", str(tmp_path))
    assert code == 2 and err.startswith("mmjax: error:") and message in err, err
    assert not (tmp_path / "x").exists()


def test_built_in_names_and_bad_names_are_refused(files, tmp_path):
    for name in ("avdigits", "../escape", ".hidden", ""):
        with pytest.raises(mmjax.ConfigError, match="dataset name"):
            mmjax.data.import_manifest(name, files[0], data_dir=str(tmp_path), label="category")


def test_kill_9_during_an_import_keeps_the_old_dataset(imported, files, tmp_path):
    """`mmjax data import --overwrite` killed mid-build: the old dataset is untouched and the
    next import clears the killed one's hidden folder."""
    rows = imported[2]
    data = tmp_path / "data"
    first = mmjax.data.import_manifest(
        "clips", files[0], label="category", data_dir=str(data), **SETTINGS
    )
    big = _write_csv(files[0].parent / "big.csv", rows * 8)
    argv = [sys.executable, "-m", "mmjax.cli", "data", "import", "clips", "--manifest", str(big),
            "--label", "category", "--data-dir", str(data), "--overwrite", "--sample-rate",
            "8000", "--audio-seconds", "1", "--image-size", "16", "--frames", "4"]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(data.glob(".clips-build-*/train.array_record*")):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert json.loads((data / "clips" / "info.json").read_text()) == first
    open_source(DataConfig(name="clips", root=str(data))).verify()
    assert [r["name"] for r in mmjax.data.list_datasets(data)] == ["clips"]
    assert list(data.glob(".clips-build-*"))  # what the killed import left, hidden
    mmjax.data.import_manifest(
        "clips", files[0], label="category", data_dir=str(data), overwrite=True, **SETTINGS
    )
    assert not list(data.glob(".clips-*"))
    assert len(grain.sources.ArrayRecordDataSource(
        [str(p) for p in open_source(DataConfig(name="clips", root=str(data))).shard_paths("train")]
    )) == first["splits"]["train"]["num_records"]  # fmt: skip


def _info(modalities: dict, vocab: dict | None = None) -> dict:
    info = {"name": "d", "num_classes": 3, "modalities": modalities}
    info["splits"] = {"train": {"num_records": 640}, "val": {"num_records": 0}}
    return info | ({"text_vocab": vocab} if vocab else {})


@pytest.mark.parametrize(
    ("modalities", "vocab", "expected"),
    [
        ({"image": {"shape": [8, 8, 1]}}, None, {"image": ("small_cnn", "", 1)}),
        ({"image": {"shape": [64, 64, 3]}}, None, {"image": ("resnet18", "", 3)}),
        ({"image": {"shape": [128, 128, 3]}}, None,
         {"image": ("efficientnet_lite0", "efficientnet-lite0", 3)}),
        ({"video": {"shape": [8, 32, 32, 3]}, "audio": {"shape": [16000], "sample_rate": 16000}},
         None, {"video": ("video", "", 3), "audio": ("cnn_lstm", "", None)}),
        ({"text": {"shape": [16]}}, {"tokenizer": "minilm-l6", "length": 16},
         {"text": ("text_transformer", "minilm-l6", None)}),
        ({"text": {"shape": [16]}}, {"tokenizer": "words", "length": 16, "size": 77},
         {"text": ("bilstm", "", None)}),
    ],
)  # fmt: skip
def test_the_chosen_model_fits_the_data(modalities, vocab, expected):
    from mmjax.auto_config import config_for_data
    from mmjax.config import experiment_from
    from mmjax.data.source import DataSource

    source = DataSource(Path("."), _info(modalities, vocab), "")
    config = config_for_data(source, fusion="mbt")
    exp = experiment_from(config.to_dict())  # a valid experiment
    assert exp.model.fusion.name == "mbt" and exp.train.eval_splits == ()
    assert exp.train.steps == 200 and exp.train.batch_size == 32  # 10 epochs < 200 steps
    encoders = dict(exp.model.encoders)
    for m, (name, weights, channels) in expected.items():
        assert encoders[m].name == name and dict(exp.model.pretrained).get(m, "") == weights
        if channels is not None:
            assert encoders[m].cfg.in_channels == channels
    if "audio" in expected:
        assert encoders["audio"].cfg.sample_rate == 16000 and encoders["audio"].cfg.n_fft == 512
    if vocab and vocab["tokenizer"] == "words":
        assert encoders["text"].cfg.vocab_size == 77
    assert exp.model.frozen == (("text",) if weights == "minilm-l6" else ())


def test_two_workers_write_the_same_shards(imported, files, tmp_path):
    _, info, _ = imported
    other = mmjax.data.import_manifest(
        "clips", files[0], label="category", group_by="speaker", data_dir=str(tmp_path),
        workers=2, **SETTINGS,
    )  # fmt: skip
    for split, entry in info["splits"].items():
        assert other["splits"][split]["shards"] == entry["shards"]
