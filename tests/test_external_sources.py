"""TFDS (array_record, no TensorFlow) and Hugging Face (save_to_disk, imagefolder) datasets
read into import Tables: labels, class names, splits and raw cells that decode to the original
pixels and samples. Real data: scikit-learn's handwritten digits, Asterisk's spoken digits."""

import functools
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image
from sklearn.datasets import load_digits

from mmjax.data.imports.external import hf_table, parse_mapping, tfds_table
from mmjax.errors import ConfigError, DataError

SOUNDS = Path("/usr/share/asterisk/sounds/en/digits")
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
N_TRAIN, N_TEST = 14, 6

pytestmark = pytest.mark.skipif(not SOUNDS.is_dir(), reason="needs Asterisk's digit recordings")


@functools.cache
def _digits():
    return load_digits()


@functools.cache
def _digit(i: int) -> tuple[np.ndarray, int]:
    """Row i: a real handwritten digit upscaled 4x to uint8 [32, 32], and its class."""
    digits = _digits()
    pixels = (digits.images[i] * 15).astype(np.uint8)
    return pixels.repeat(4, axis=0).repeat(4, axis=1), int(digits.target[i])


def _speech(digit: int) -> np.ndarray:
    """A real recording of the spoken digit: int16 samples at 8 kHz."""
    samples, rate = soundfile.read(SOUNDS / f"{digit}.wav", dtype="int16")
    assert rate == 8000
    return samples


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _pixels(cell: bytes | str) -> np.ndarray:
    return np.asarray(Image.open(cell if isinstance(cell, str) else io.BytesIO(cell)))


def _samples(cell: bytes) -> np.ndarray:
    samples, rate = soundfile.read(io.BytesIO(cell), dtype="int16")
    assert rate == 8000
    return samples


def _as_tf_prepared(version_dir: Path) -> None:
    """Turn features.json's `speech` Tensor into an Audio(sample_rate=8000) and `clip` into a
    Video: the same stored bytes as TensorFlow-prepared datasets (their classes need TF)."""
    path = version_dir / "features.json"
    config = json.loads(path.read_text())
    top = config["featuresDict"]["features"]
    audio = {**top["speech"]["tensor"], "sampleRate": "8000"}
    top["speech"] = {"pythonClassName": "tfds.features.Audio", "audio": audio}
    video = {"shape": {"dimensions": ["-1", "32", "32", "1"]}, "dtype": "uint8"}
    top["clip"] = {"pythonClassName": "tfds.features.Video", "video": video}
    path.write_text(json.dumps(config))


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tinydigits/main (train + test) and tinydigits/odd (train + extra), as array_record."""
    import tensorflow_datasets as tfds  # the `tfds` extra, in `dev`

    features = tfds.features

    class Tinydigits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = (tfds.core.BuilderConfig(name="main"), tfds.core.BuilderConfig("odd"))

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=features.FeaturesDict(
                    {
                        "image": features.Image(shape=(32, 32, 1)),
                        "pixels": features.Tensor(shape=(32, 32), dtype=np.uint8),
                        "caption": features.Text(),
                        "speech": features.Tensor(shape=(None,), dtype=np.int16),
                        "wave": features.Tensor(shape=(None,), dtype=np.int16),
                        "clip": features.Tensor(shape=(None,), dtype=np.object_),
                        "label": features.ClassLabel(names=NAMES),
                        "number": np.int64,
                        "writer": features.Text(),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            second = "test" if self.builder_config.name == "main" else "extra"
            return {
                "train": self._generate_examples(0, N_TRAIN),
                second: self._generate_examples(N_TRAIN, N_TRAIN + N_TEST),
            }

        def _generate_examples(self, start: int, stop: int):
            for i in range(start, stop):
                pixels, digit = _digit(i)
                yield (
                    i,
                    {
                        "image": Image.fromarray(pixels),
                        "pixels": pixels,
                        "caption": f"digit {i}: a handwritten {NAMES[digit]}",
                        "speech": _speech(digit),
                        "wave": _speech(digit),
                        "clip": np.array([_png(pixels)] * 2, dtype=object),
                        "label": digit,
                        "number": digit,
                        "writer": f"w{i % 3}",
                    },
                )

    root = tmp_path_factory.mktemp("tfds")
    for config in ("main", "odd"):
        Tinydigits(data_dir=root, config=config, file_format="array_record").download_and_prepare()
        _as_tf_prepared(root / "tinydigits" / config / "1.0.0")
    return root


def test_tfds_table_reads_labels_splits_and_cells_without_tensorflow(tfds_dir: Path):
    mapping = parse_mapping("image=image, audio=speech, text=caption, label=label, group=writer")
    table = tfds_table("tinydigits:main", tfds_dir, mapping)
    assert len(table) == N_TRAIN + N_TEST
    assert table.class_names == NAMES
    assert table.source == f"tfds tinydigits/main:1.0.0 ({tfds_dir})"
    assert table.modalities == ("image", "audio", "text")
    assert table.row_names[N_TRAIN] == "test[0]"
    assert len(table.sha256) == 64
    for row in range(len(table)):  # TFDS shuffles: the caption says which digit a row holds
        cells = table.row(row)
        i = int(cells["text"].split(":")[0].removeprefix("digit "))
        pixels, digit = _digit(i)
        assert cells["text"] == f"digit {i}: a handwritten {NAMES[digit]}"
        assert table.labels[row] == NAMES[digit]
        assert table.splits[row] == ("train" if i < N_TRAIN else "test")
        assert table.groups[row] == f"w{i % 3}"
        assert isinstance(cells["image"], bytes) and cells["image"].startswith(b"\x89PNG")
        np.testing.assert_array_equal(_pixels(cells["image"]), pixels)
        np.testing.assert_array_equal(_samples(cells["audio"]), _speech(digit))
    assert "tensorflow" not in sys.modules


def test_tfds_import_through_the_command_line(tfds_dir: Path, tmp_path: Path, capsys):
    from mmjax import cli

    argv = ["data", "import", "tiny", "--tfds", "tinydigits:main", "--tfds-dir", str(tfds_dir),
            "--map", "image=image,audio=speech,text=caption,label=label,group=writer",
            "--image-size", "16", "--sample-rate", "8000", "--audio-seconds", "1",
            "--data-dir", str(tmp_path)]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    info = json.loads((tmp_path / "tiny" / "info.json").read_text())
    assert info["class_names"] == NAMES and set(info["modalities"]) == {"image", "audio", "text"}
    assert {s: e["num_records"] for s, e in info["splits"].items()} == {
        "train": N_TRAIN, "val": 0, "test": N_TEST,
    }  # fmt: skip
    assert info["source"]["settings"]["map"]["group"] == "writer"
    assert "tensorflow" not in sys.modules


def test_tfds_arrays_and_integer_labels(tfds_dir: Path):
    mapping = {"image": "pixels", "text": "caption", "label": "number"}
    table = tfds_table("tinydigits/main:1.0.0", tfds_dir, mapping)
    assert table.class_names is None
    for row in (0, N_TRAIN):
        cells = table.row(row)
        pixels, digit = _digit(int(cells["text"].split(":")[0].removeprefix("digit ")))
        assert table.labels[row] == str(digit)
        np.testing.assert_array_equal(_pixels(cells["image"]), pixels)


@pytest.mark.parametrize(
    ("spec", "mapping", "error", "words"),
    [
        ("tinydigits:main", "image=img,label=label", ConfigError, ["image=img", "caption"]),
        ("tinydigits:main", "audio=wave,label=label", ConfigError, ["audio=wave", "Tensor"]),
        ("tinydigits:main", "video=clip,label=label", ConfigError, ["video=clip", "frames"]),
        ("tinydigits:main", "image=image", ConfigError, ["label=", "writer"]),
        ("tinydigits", "image=image,label=label", ConfigError, ["main, odd"]),
        ("tinydigits:odd", "image=image,label=label", ConfigError, ["'extra'", "validation"]),
        ("tinydigits:main:9.9.9", "image=image,label=label", DataError, ["1.0.0"]),
        ("mnist", "image=image,label=label", DataError, ["tinydigits", "--tfds-dir"]),
    ],
)
def test_tfds_errors_name_the_choices(tfds_dir, spec, mapping, error, words):
    with pytest.raises(error) as caught:
        tfds_table(spec, tfds_dir, parse_mapping(mapping))
    for word in words:
        assert word in str(caught.value)


def test_parse_mapping_rejects_unknown_keys():
    assert parse_mapping("image=img,label=y") == {"image": "img", "label": "y"}
    for text in ("picture=img", "image", "image=a,image=b"):
        with pytest.raises(ConfigError, match="--map item"):
            parse_mapping(text)
    with pytest.raises(ConfigError, match="image, audio, video, text, label, group"):
        parse_mapping("picture=img")


@pytest.fixture(scope="module")
def hf_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """saved/ (a DatasetDict: train + validation), single/ (a Dataset), folder/ (imagefolder
    with split folders), flat/ (imagefolder without), wavs/ (audio files only), notes/ (neither).
    The imagefolder cache goes to a temporary folder."""
    import datasets  # the `hf` extra, in `dev`

    root = tmp_path_factory.mktemp("hf")
    features = datasets.Features(
        {
            "photo": datasets.Image(decode=False),
            "speech": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
            "sentence": datasets.Value("string"),
            "intent": datasets.ClassLabel(names=NAMES),
            "speaker": datasets.Value("string"),
        }
    )

    def rows(start: int, stop: int):
        digits = [_digit(i) for i in range(start, stop)]
        columns = {
            "photo": [{"bytes": _png(p), "path": None} for p, _ in digits],
            "speech": [
                {"bytes": (SOUNDS / f"{d}.wav").read_bytes(), "path": f"{d}.wav"} for _, d in digits
            ],
            "sentence": [f"say {NAMES[d]}" for _, d in digits],
            "intent": [d for _, d in digits],
            "speaker": [f"s{i % 2}" for i in range(start, stop)],
        }
        dataset = datasets.Dataset.from_dict(columns, features=features)
        return dataset.cast_column("speech", datasets.Audio(decode=False))

    splits = {"train": rows(0, N_TRAIN), "validation": rows(N_TRAIN, N_TRAIN + N_TEST)}
    datasets.DatasetDict(splits).save_to_disk(root / "saved")
    rows(0, 3).save_to_disk(root / "single")
    for i in range(8):
        pixels, digit = _digit(i)
        for layout in (f"folder/{'train' if i < 6 else 'test'}", "flat"):
            (root / layout / NAMES[digit]).mkdir(parents=True, exist_ok=True)
            (root / layout / NAMES[digit] / f"{i}.png").write_bytes(_png(pixels))
    (root / "wavs").mkdir()
    shutil.copy(SOUNDS / "1.wav", root / "wavs")
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("no data here")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(root / "cache"))
        yield root


def test_hf_saved_dataset_dict(hf_root: Path, monkeypatch: pytest.MonkeyPatch):
    for module in ("torch", "torchcodec"):  # importing either now fails
        monkeypatch.setitem(sys.modules, module, None)
    mapping = parse_mapping("image=photo,audio=speech,text=sentence,label=intent,group=speaker")
    table = hf_table(hf_root / "saved", mapping)
    digits = [_digit(i)[1] for i in range(N_TRAIN + N_TEST)]
    assert table.class_names == NAMES
    assert table.labels == [NAMES[d] for d in digits]
    assert table.splits == ["train"] * N_TRAIN + ["val"] * N_TEST
    assert table.groups[:3] == ["s0", "s1", "s0"]
    assert table.row_names[-1] == f"validation[{N_TEST - 1}]"
    assert len(table.sha256) == 64
    cells = table.row(N_TRAIN + 2)
    pixels, digit = _digit(N_TRAIN + 2)
    np.testing.assert_array_equal(_pixels(cells["image"]), pixels)
    np.testing.assert_array_equal(_samples(cells["audio"]), _speech(digit))
    assert cells["text"] == f"say {NAMES[digit]}"


def test_hf_single_dataset_and_string_labels(hf_root: Path):
    table = hf_table(hf_root / "single", {"text": "sentence", "label": "speaker"})
    assert table.splits is None and table.class_names is None
    assert table.labels == ["s0", "s1", "s0"]
    assert table.row_names == ["row 0", "row 1", "row 2"]


def test_hf_imagefolder(hf_root: Path):
    table = hf_table(hf_root / "folder", {"image": "image", "label": "label"})
    assert table.splits == ["train"] * 6 + ["test"] * 2
    assert sorted(set(table.labels)) == table.class_names
    for i in range(len(table)):
        cell = table.row(i)["image"]
        assert Path(cell).parent.name == table.labels[i]
        np.testing.assert_array_equal(_pixels(cell), _digit(int(Path(cell).stem))[0])
    assert hf_table(hf_root / "flat", {"image": "image", "label": "label"}).splits is None


@pytest.mark.parametrize(
    ("folder", "mapping", "error", "words"),
    [
        ("wavs", "audio=audio,label=label", DataError, ["--folder", "mmjax data import"]),
        ("saved", "image=picture,label=intent", ConfigError, ["image=picture", "photo, sentence"]),
        ("saved", "text=photo,label=intent", ConfigError, ["text=photo", "string"]),
        ("notes", "image=image,label=label", DataError, ["save_to_disk", "readme.txt"]),
        ("missing", "image=image,label=label", DataError, ["not a folder"]),
    ],
)
def test_hf_errors_name_the_choices(hf_root, folder, mapping, error, words):
    with pytest.raises(error) as caught:
        hf_table(hf_root / folder, parse_mapping(mapping))
    for word in words:
        assert word in str(caught.value)
