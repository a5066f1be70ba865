"""Import routes that read existing datasets: TFDS datasets already prepared as array_record
(`--tfds NAME[:CONFIG] --tfds-dir DIR`) and Hugging Face datasets saved with `save_to_disk` or
laid out as an imagefolder (`--hf DIR`). Both hand the importer a `Table` of raw cells.

Neither route imports TensorFlow or torch, nor touches the network. Rows of every split are
concatenated; split names map to mmjax's "train" / "val" / "test", and any other split name is
a ConfigError (a row of an unknown split cannot be placed). Media are read lazily by `row(i)`;
labels, splits and groups are read for all rows up front.
"""

import bisect
import hashlib
import io
import json
import re
import wave
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mmjax.data.imports.splits import ALIASES
from mmjax.data.imports.table import MODALITIES, Cell, Table
from mmjax.data.media import EXTENSIONS
from mmjax.errors import ConfigError, DataError

MAP_KEYS = (*MODALITIES, "label", "group")
AUDIO_SUFFIXES = {s for s, m in EXTENSIONS.items() if m == "audio"}
IMAGE_SUFFIXES = {s for s, m in EXTENSIONS.items() if m == "image"}
_VERSION = re.compile(r"\d+\.\d+\.\d+")
_TENSOR_CLASS = "tensorflow_datasets.core.features.tensor_feature.Tensor"

Reader = Callable[[Any], Cell]


def parse_mapping(text: str) -> dict[str, str]:
    """Parses --map: "image=image,label=label" -> {"image": "image", "label": "label"}."""
    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, eq, column = (s.strip() for s in item.partition("="))
        if not eq or not column or key not in MAP_KEYS:
            raise ConfigError(
                f"--map item {item!r}: expected KEY=COLUMN with KEY one of {', '.join(MAP_KEYS)}"
            )
        if key in mapping:
            raise ConfigError(f"--map item {item!r}: {key} is mapped twice")
        mapping[key] = column
    return mapping


def _check_mapping(mapping: dict[str, str], available: Iterable[str], what: str) -> None:
    """A label and at least one modality, each naming one of the source's columns/features."""
    names = sorted(available)
    if "label" not in mapping or not set(mapping) & set(MODALITIES):
        raise ConfigError(
            f"--map needs label=... and at least one of {', '.join(MODALITIES)}; "
            f"got {mapping or 'nothing'}; the {what} are: {', '.join(names)}"
        )
    for key, column in mapping.items():
        if key not in MAP_KEYS:
            raise ConfigError(f"--map key {key!r}: expected one of {', '.join(MAP_KEYS)}")
        if column not in names:
            raise ConfigError(
                f"--map item {key}={column}: no {column!r} among the {what}: {', '.join(names)}"
            )


def _mmjax_split(name: str, all_names: Sequence[str], flag: str) -> str:
    """A source split name -> "train", "val" or "test"."""
    if name not in ALIASES:
        raise ConfigError(
            f"{flag}: split {name!r} (of {', '.join(all_names)}) has no mmjax split; "
            f"accepted split names: {', '.join(ALIASES)}"
        )
    return ALIASES[name]


def _label_text(value: Any, names: list[str] | None) -> str:
    """A label/group cell as text: a class name, a decoded string or a decimal integer."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        value = value.item()
    if names is not None:
        return names[value] if 0 <= value < len(names) else ""  # -1: no label (HF, TFDS)
    return str(value)


def _sha256_files(files: Iterable[Path], root: Path) -> str:
    """sha256 over each file's path relative to `root` and its bytes, streamed."""
    digest = hashlib.sha256()
    for file in sorted(files):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


class _Parts:
    """Global row indices over consecutive parts (one per split)."""

    def __init__(self, lengths: Sequence[int]):
        self.starts = np.cumsum([0, *lengths]).tolist()

    def locate(self, i: int) -> tuple[int, int]:
        """Global row i -> (part, row within the part)."""
        if not 0 <= i < self.starts[-1]:
            raise IndexError(f"row {i} of {self.starts[-1]}")
        part = bisect.bisect_right(self.starts, i) - 1
        return part, i - self.starts[part]


def _png(pixels: np.ndarray) -> bytes:
    """A uint8 [H, W] or [H, W, C] array -> lossless PNG bytes."""
    from PIL import Image

    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _pcm16(samples: np.ndarray) -> np.ndarray:
    """Samples as int16: floats are in [-1, 1]; int64 holding 16-bit values (TFDS's default
    Audio dtype) stays exact; wider integers keep their top 16 bits."""
    if samples.dtype.kind == "f":
        return np.round(np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
    if samples.size == 0 or (samples.min() >= -(1 << 15) and samples.max() < 1 << 15):
        return samples.astype(np.int16)
    return (samples.astype(np.int64) >> (8 * samples.dtype.itemsize - 16)).astype(np.int16)


def _wav(samples: np.ndarray, rate: int) -> bytes:
    """A waveform [S] or [S, C] -> 16-bit PCM WAV bytes at `rate`."""
    frames = _pcm16(np.asarray(samples))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(frames.shape[1] if frames.ndim == 2 else 1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(frames.astype("<i2").tobytes())
    return buffer.getvalue()


# ---- TFDS ----------------------------------------------------------------------------------


class _Replaced(NamedTuple):
    """A top-level TFDS feature whose class needs TensorFlow, read as the Tensor it stores."""

    kind: str  # "audio" or "video"
    sample_rate: int
    encoded: bool  # audio stored as its encoded file (Audio(lazy_decode=True))


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError("--tfds needs tensorflow-datasets: pip install 'mmjax[tfds]'") from None
    return tfds


def _parse_spec(spec: str) -> tuple[str, str | None, str | None]:
    """Parses --tfds: NAME, NAME:CONFIG, NAME:X.Y.Z or NAME/CONFIG:X.Y.Z -> (name, config,
    version); CONFIG and X.Y.Z may come in either order, after ":" or "/"."""
    name, *parts = re.split(r"[:/]", spec)
    config = version = None
    for part in parts:
        if _VERSION.fullmatch(part) and version is None:
            version = part
        elif part and not _VERSION.fullmatch(part) and config is None:
            config = part
        else:
            raise ConfigError(f"--tfds {spec!r}: expected NAME, NAME:CONFIG or NAME/CONFIG:X.Y.Z")
    if not name:
        raise ConfigError(f"--tfds {spec!r}: expected NAME, NAME:CONFIG or NAME/CONFIG:X.Y.Z")
    return name, config, version


def _listing(folder: Path) -> str:
    entries = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    return ", ".join(entries) or "nothing"


def _versions(folder: Path) -> list[str]:
    """The prepared version folders (X.Y.Z holding a dataset_info.json), oldest first."""
    found = [p.parent.name for p in folder.glob("*/dataset_info.json")]
    found = [v for v in found if _VERSION.fullmatch(v)]
    return sorted(found, key=lambda v: tuple(map(int, v.split("."))))


def _builder_dir(data_dir: Path, spec: str) -> Path:
    """The prepared dataset's folder: DIR/NAME[/CONFIG]/VERSION (the newest when not given)."""
    name, config, version = _parse_spec(spec)
    folder = data_dir / name
    if not folder.is_dir():
        raise DataError(
            f"--tfds {spec}: no prepared dataset {name!r} in --tfds-dir {data_dir} "
            f"(it holds: {_listing(data_dir)})"
        )
    if config is None and not _versions(folder):
        configs = sorted(p.name for p in folder.iterdir() if _versions(p))
        if len(configs) != 1:
            raise ConfigError(
                f"--tfds {spec}: name one of the configs prepared in {folder} as "
                f"{name}:CONFIG: {', '.join(configs) or 'none'}"
            )
        config = configs[0]
    folder = folder / config if config else folder
    versions = _versions(folder)
    if not versions or (version and version not in versions):
        raise DataError(
            f"--tfds {spec}: no prepared version {version or ''} in {folder} "
            f"(it holds: {_listing(folder)})"
        )
    return folder / (version or versions[-1])


def _replacement(node: dict) -> tuple[dict, _Replaced] | None:
    """For an Audio or Video node of features.json (their classes import TensorFlow): the
    Tensor node they are stored as, and what was replaced."""
    cls = node.get("pythonClassName", "")
    if cls.endswith(".Audio"):
        audio = node["audio"]
        encoded = bool(audio.get("lazyDecode"))
        stored = {"shape": {}, "dtype": "string"} if encoded else audio
        tensor = {k: stored[k] for k in ("shape", "dtype", "encoding") if k in stored}
        replaced = _Replaced("audio", int(audio.get("sampleRate", 0)), encoded)
        return {"pythonClassName": _TENSOR_CLASS, "tensor": tensor}, replaced
    if cls.endswith(".Video"):
        frames = {"shape": {"dimensions": ["-1"]}, "dtype": "string", "encoding": "none"}
        return {"pythonClassName": _TENSOR_CLASS, "tensor": frames}, _Replaced("video", 0, False)
    return None


def _tf_free(value: Any) -> Any:
    """features.json content with every Audio/Video node replaced by its stored Tensor."""
    if isinstance(value, dict):
        found = _replacement(value)
        return found[0] if found else {k: _tf_free(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tf_free(v) for v in value]
    return value


def _load_builder(tfds, builder_dir: Path) -> tuple[Any, dict[str, _Replaced]]:
    """A read-only builder of the prepared dataset, and its replaced top-level features."""
    config = json.loads((builder_dir / "features.json").read_text())
    top = config.get("featuresDict", {}).get("features", {})
    replaced = {name: found[1] for name, node in top.items() if (found := _replacement(node))}
    features = tfds.features.FeatureConnector.from_json(_tf_free(config))
    info = tfds.core.dataset_info.read_proto_from_builder_dir(builder_dir)
    info.features.CopyFrom(features.to_proto())
    builder = tfds.core.read_only_builder.ReadOnlyBuilder(builder_dir, info_proto=info)
    if builder.info.file_format.value != "array_record":
        raise DataError(
            f"{builder_dir}: prepared as {builder.info.file_format.value}; --tfds reads "
            "array_record (prepare it with file_format='array_record')"
        )
    return builder, replaced


def _is_string(feature) -> bool:
    return np.dtype(feature.np_dtype).kind in "OSU"


def _tfds_reader(tfds, modality: str, name: str, feature, replaced: _Replaced | None) -> Reader:
    """How a TFDS feature's stored value becomes a raw cell of `modality`."""
    scalar_bytes = isinstance(feature, tfds.features.Tensor) and feature.shape == ()
    scalar_bytes = scalar_bytes and _is_string(feature)
    if modality == "text" and scalar_bytes:
        return lambda v: v.decode("utf-8") if isinstance(v, bytes) else v
    if modality != "text" and scalar_bytes:
        return lambda v: v  # an encoded media file (also Audio(lazy_decode=True))
    if modality == "image" and isinstance(feature, tfds.features.Image):
        if feature.np_dtype not in (np.uint8, np.uint16):
            raise ConfigError(
                f"--map item image={name}: {feature.np_dtype} images are not supported"
            )
        return lambda v: v  # skip-decoded: the stored PNG/JPEG bytes
    pixels = isinstance(feature, tfds.features.Tensor) and feature.np_dtype == np.uint8
    if modality == "image" and pixels and len(feature.shape) in (2, 3):
        return _png
    if modality == "audio" and replaced and replaced.kind == "audio":
        if not replaced.sample_rate:
            raise ConfigError(f"--map item audio={name}: the Audio feature has no sample_rate")
        return lambda v: _wav(v, replaced.sample_rate)
    if modality == "video":
        raise ConfigError(
            f"--map item video={name}: video frames as arrays or images are not supported; "
            "a video feature must hold encoded video bytes (e.g. MP4)"
        )
    raise ConfigError(
        f"--map item {modality}={name}: a {type(feature).__name__} feature "
        f"{'' if replaced is None else f'({replaced.kind}) '}cannot be read as {modality}"
    )


def _tfds_label_names(tfds, key: str, name: str, feature) -> list[str] | None:
    """A label/group feature's class names (None for strings and integers)."""
    if isinstance(feature, tfds.features.ClassLabel):
        return list(feature.names)
    scalar = isinstance(feature, tfds.features.Tensor) and feature.shape == ()
    if scalar and (_is_string(feature) or np.dtype(feature.np_dtype).kind in "iub"):
        return None
    raise ConfigError(
        f"--map item {key}={name}: a {key} must be a ClassLabel, text or integer scalar feature"
    )


def _skip_decoding(tfds, features) -> dict:
    """Decoders that leave every flat feature as stored (images stay encoded bytes)."""
    containers = (tfds.features.FeaturesDict, tfds.features.Sequence)
    return {
        name: tfds.decode.SkipDecoding()
        for name, feature in features.items()
        if not isinstance(feature, containers)
    }


def _read_columns(source, names: list[str], chunk: int = 256) -> dict[str, list]:
    """The named features of every record of one split (each record read once)."""
    columns: dict[str, list] = {name: [] for name in names}
    for start in range(0, len(source), chunk):
        for record in source.__getitems__(range(start, min(start + chunk, len(source)))):
            for name in names:
                columns[name].append(record[name])
    return columns


def tfds_table(spec: str, data_dir: str | Path, mapping: dict[str, str]) -> Table:
    """A TFDS dataset prepared as array_record under `data_dir` -> a Table."""
    tfds = _import_tfds()
    data_dir = Path(data_dir).expanduser()
    builder_dir = _builder_dir(data_dir, spec)
    builder, replaced = _load_builder(tfds, builder_dir)
    features = builder.info.features
    _check_mapping(mapping, features.keys(), f"features of {builder.info.full_name}")
    readers = {
        m: _tfds_reader(tfds, m, mapping[m], features[mapping[m]], replaced.get(mapping[m]))
        for m in MODALITIES
        if m in mapping
    }
    keys = [k for k in ("label", "group") if k in mapping]
    names = {k: _tfds_label_names(tfds, k, mapping[k], features[mapping[k]]) for k in keys}
    split_names = list(builder.info.splits)
    ours = [_mmjax_split(s, split_names, f"--tfds {spec}") for s in split_names]
    decoders = _skip_decoding(tfds, features)
    sources = [builder.as_data_source(split=s, decoders=decoders) for s in split_names]
    columns = [_read_columns(src, sorted({mapping[k] for k in keys})) for src in sources]
    text = {k: [_label_text(v, names[k]) for c in columns for v in c[mapping[k]]] for k in keys}
    parts = _Parts([len(src) for src in sources])

    def row(i: int) -> dict[str, Cell]:
        part, j = parts.locate(i)
        record = sources[part][j]
        return {m: read(record[mapping[m]]) for m, read in readers.items()}

    info = builder.info
    config = f"/{info.config_name}" if info.config_name else ""
    return Table(
        source=f"tfds {info.name}{config}:{info.version} ({data_dir})",
        columns={m: mapping[m] for m in readers},
        labels=text["label"],
        row_names=[f"{s}[{j}]" for s, src in zip(split_names, sources) for j in range(len(src))],
        row=row,
        class_names=names["label"],
        splits=[ours[p] for p, src in enumerate(sources) for _ in range(len(src))],
        groups=text.get("group"),
        sha256=_sha256_files(builder_dir.glob("*.array_record*"), builder_dir),
        settings={"map": mapping},
    )


# ---- Hugging Face --------------------------------------------------------------------------


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("--hf needs Hugging Face datasets: pip install datasets") from None
    return datasets


def _files(folder: Path, suffixes: set[str]) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file()]


def _load_hf(datasets, path: Path) -> tuple[Any, list[Path]]:
    """A saved Dataset/DatasetDict or an imagefolder, and the files that identify it."""
    if not path.is_dir():
        raise DataError(
            f"--hf {path}: not a folder; expected a dataset saved with save_to_disk or an "
            "imagefolder layout (ROOT/[SPLIT/]CLASS/IMAGE)"
        )
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return datasets.load_from_disk(str(path)), list(path.rglob("*.arrow"))
    if _files(path, AUDIO_SUFFIXES):
        raise DataError(
            f"--hf {path}: a folder of audio files (Hugging Face's audiofolder needs torchcodec); "
            f"import it with mmjax's own folder import: mmjax data import NAME --folder {path}"
        )
    images = _files(path, IMAGE_SUFFIXES)
    if not images:
        raise DataError(
            f"--hf {path}: holds neither a dataset saved with save_to_disk (dataset_dict.json "
            "or state.json) nor images in an imagefolder layout; it holds: " + _listing(path)
        )
    offline = datasets.DownloadConfig(local_files_only=True)
    loaded = datasets.load_dataset("imagefolder", data_dir=str(path), download_config=offline)
    return loaded, images


def _hf_split_parts(datasets, loaded, path: Path) -> tuple[list[str] | None, list]:
    """(split names or None, one Dataset per split). An imagefolder without split folders is
    reported by Hugging Face as "train": that is no split information, so None."""
    if not isinstance(loaded, datasets.DatasetDict):
        return None, [loaded]
    split_names = list(loaded.keys())
    if split_names == ["train"] and not any(path.glob("train*")):
        return None, [loaded["train"]]
    return split_names, [loaded[s] for s in split_names]


def _hf_raw(datasets, modality: str, column: str, feature) -> Any:
    """The column's feature read without decoding (media cast to decode=False), or a
    ConfigError for a column that holds no raw cell of `modality`."""
    media = {"image": datasets.Image, "audio": datasets.Audio, "video": datasets.Video}
    strings = ("string", "large_string")
    if modality in media and isinstance(feature, media[modality]):
        return media[modality](decode=False)
    if isinstance(feature, datasets.Value):
        accepted = strings if modality == "text" else (*strings, "binary", "large_binary")
        if feature.dtype in accepted:
            return feature
    wanted = "a string column" if modality == "text" else f"a {modality.title()}, path or bytes"
    raise ConfigError(f"--map item {modality}={column}: a {feature} column; expected {wanted}")


def _raw_columns(ds, features: dict[str, Any]) -> Any:
    """The dataset's mapped columns only, media not decoded (a cast of the feature type
    alone: Image/Audio/Video keep their {"bytes", "path"} storage, nothing is rewritten)."""
    ds = ds.select_columns(list(features))
    for column, feature in features.items():
        if feature != ds.features[column]:
            ds = ds.cast_column(column, feature)
    return ds


def _column(ds, column: str) -> list:
    """One column's stored values (ClassLabel as integers), read from Arrow undecoded."""
    return ds.data.column(column).to_pylist()


def _hf_cell(value: Any) -> Cell:
    """A raw media/text value: {"bytes", "path"} -> the bytes, else the path."""
    if isinstance(value, dict):
        return value.get("bytes") or value.get("path")
    return value


def _hf_label_names(datasets, key: str, column: str, feature) -> list[str] | None:
    """A label/group column's class names (None for plain values)."""
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    if isinstance(feature, datasets.Value):
        return None
    raise ConfigError(
        f"--map item {key}={column}: a {feature} column; a {key} must be a ClassLabel or a value"
    )


def hf_table(path: str | Path, mapping: dict[str, str]) -> Table:
    """A Hugging Face dataset saved with save_to_disk, or an imagefolder -> a Table."""
    datasets = _import_datasets()
    path = Path(path).expanduser()
    loaded, files = _load_hf(datasets, path)
    split_names, parts_ds = _hf_split_parts(datasets, loaded, path)
    features = parts_ds[0].features
    _check_mapping(mapping, features.keys(), f"columns of {path}")
    modalities = [m for m in MODALITIES if m in mapping]
    casts = {mapping[m]: _hf_raw(datasets, m, mapping[m], features[mapping[m]]) for m in modalities}
    keys = [k for k in ("label", "group") if k in mapping]
    names = {k: _hf_label_names(datasets, k, mapping[k], features[mapping[k]]) for k in keys}
    readable = [_raw_columns(ds, casts) for ds in parts_ds]
    text = {
        k: [_label_text(v, names[k]) for ds in parts_ds for v in _column(ds, mapping[k])]
        for k in keys
    }
    parts = _Parts([len(ds) for ds in parts_ds])

    def row(i: int) -> dict[str, Cell]:
        part, j = parts.locate(i)
        record = readable[part][j]
        return {m: _hf_cell(record[mapping[m]]) for m in modalities}

    if split_names is None:
        row_names, splits = [f"row {j}" for j in range(len(parts_ds[0]))], None
    else:
        flag = f"--hf {path}"
        ours = [_mmjax_split(s, split_names, flag) for s in split_names]
        row_names = [f"{s}[{j}]" for s, ds in zip(split_names, parts_ds) for j in range(len(ds))]
        splits = [ours[p] for p, ds in enumerate(parts_ds) for _ in range(len(ds))]
    return Table(
        source=f"hf {path}",
        columns={m: mapping[m] for m in modalities},
        labels=text["label"],
        row_names=row_names,
        row=row,
        class_names=names["label"],
        splits=splits,
        groups=text.get("group"),
        base_dir=path,
        sha256=_sha256_files(files, path),
        settings={"map": mapping},
    )
