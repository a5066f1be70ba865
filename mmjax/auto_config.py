"""A model chosen for a dataset (`mmjax train --data NAME`, `mmjax.fit`): one encoder per
modality picked from the dataset's shapes, a fusion head, and training settings sized to the
data, written to the workdir as an ordinary config file so the choice can be edited and rerun.
"""

import dataclasses
import math
import pprint
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections

from mmjax.config import DataConfig, as_json_dict, set_value
from mmjax.data.source import DataSource
from mmjax.errors import ConfigError
from mmjax.experiments import experiment_config
from mmjax.folders import output_folder
from mmjax.registry import ENCODERS, FUSIONS

CONFIG_FILE = "config.py"
BATCH_SIZE = 32  # divisible by every power-of-two device count up to 32
EPOCHS = 10
STEPS = (200, 3000)  # the fewest and the most steps a chosen config trains
LARGE_IMAGE = 96  # from this side up, images get the pretrained EfficientNet-Lite0
SMALL_IMAGE = 32  # up to this side, images get the small CNN


def component(registry: Any, name: str, **fields: Any) -> dict[str, Any]:
    """A config section naming `name` with every field of its Config (so `--set` can reach
    each), `fields` overriding the defaults."""
    return {"name": name, **dataclasses.asdict(registry.get(name).Config(**fields))}


def _image_encoder(shape: list[int]) -> tuple[dict[str, Any], str]:
    """(encoder section, catalog weights or "") for images [H, W, C]."""
    side, channels = min(shape[:2]), shape[2]
    if side >= LARGE_IMAGE and channels == 3:
        weights = "efficientnet-lite0"
        return component(ENCODERS, "efficientnet_lite0", imagenet_input=True), weights
    if side <= SMALL_IMAGE:
        deeper = {"channels": (32, 64, 128), "dim": 128} if side >= 16 else {}
        return component(ENCODERS, "small_cnn", in_channels=channels, **deeper), ""
    return component(ENCODERS, "resnet18", in_channels=channels, stem="cifar"), ""


def audio_encoder(sample_rate: int) -> dict[str, Any]:
    """A log-mel CNN-LSTM with 32 ms windows and 10 ms hops at the data's sample rate."""
    n_fft = 2 ** math.ceil(math.log2(0.032 * sample_rate))
    return component(
        ENCODERS, "cnn_lstm", sample_rate=sample_rate, n_fft=n_fft, hop_length=sample_rate // 100
    )


def choose_encoders(info: dict[str, Any]) -> tuple[dict, dict[str, str], tuple[str, ...]]:
    """({modality: encoder section}, {modality: catalog weights}, frozen modalities)."""
    encoders, pretrained, frozen = {}, {}, []
    for m, entry in sorted(info["modalities"].items()):
        shape = entry["shape"]
        if m == "image":
            encoders[m], pretrained[m] = _image_encoder(shape)
        elif m == "audio":
            encoders[m] = audio_encoder(entry["sample_rate"])
        elif m == "video":
            frame = "small_cnn" if min(shape[1:3]) <= SMALL_IMAGE else "resnet18"
            encoders[m] = component(ENCODERS, "video", frame_encoder=frame, in_channels=shape[3])
        elif m == "text" and info["text_vocab"]["tokenizer"] == "minilm-l6":
            encoders[m] = component(ENCODERS, "text_transformer")
            pretrained[m] = "minilm-l6"
            frozen.append(m)  # 22.7M parameters: trained heads on its sentence vectors
        elif m == "text":
            size = info["text_vocab"]["size"]
            encoders[m] = component(ENCODERS, "bilstm", vocab_size=size, embed_dim=128, hidden=128)
        else:
            raise ConfigError(f"dataset {info['name']!r}: no encoder is chosen for {m!r} data")
    return encoders, {m: w for m, w in pretrained.items() if w}, tuple(frozen)


def config_for_data(
    source: DataSource,
    *,
    fusion: str = "late_concat",
    root: str = "",
    overrides: Mapping[str, Any] | None = None,
) -> ml_collections.ConfigDict:
    """The locked experiment config chosen for `source` (an imported or built dataset), with
    `overrides` ({dotted key: value}) applied. The checkpoint interval and the warm-up follow
    the final step count unless they are overridden too."""
    info = source.info
    FUSIONS.get(fusion)  # ConfigError listing the fusion heads
    encoders, pretrained, frozen = choose_encoders(info)
    model = {
        "encoders": encoders,
        "fusion": component(FUSIONS, fusion),
        "num_classes": info["num_classes"],
        "adversarial_weight": 0.0,
        "unimodal_weight": 0.0,
        "classification_weight": 1.0,
        "frozen": frozen,
        "pretrained": {m: pretrained.get(m, "") for m in encoders},
    }
    eval_splits = tuple(
        s for s in ("val", "test") if info["splits"].get(s, {}).get("num_records", 0)
    )
    cfg = experiment_config(
        model, DataConfig(name=info["name"], root=root), 1e-3, eval_splits, None
    )
    train_records = info["splits"]["train"]["num_records"]
    epochs_steps = math.ceil(EPOCHS * train_records / BATCH_SIZE)
    cfg.train.steps = min(max(epochs_steps, STEPS[0]), STEPS[1])
    cfg.train.batch_size = cfg.train.eval_batch_size = BATCH_SIZE
    cfg.lock()
    overrides = dict(overrides or {})
    for key, value in overrides.items():
        set_value(cfg, key, value)
    if "train.checkpoint_every" not in overrides:
        cfg.train.checkpoint_every = max(cfg.train.steps // 4, 1)
    if "optim.warmup_steps" not in overrides:
        cfg.optim.warmup_steps = min(100, cfg.train.steps // 10)
    return cfg


def describe(cfg: ml_collections.ConfigDict) -> str:
    """One line per choice, for the console."""
    model = cfg.model
    lines = []
    for m, section in model.encoders.items():
        weights = model.pretrained.get(m) or ""
        frozen = " (frozen)" if m in model.frozen else ""
        lines.append(
            f"  {m}: {section.name}" + (f" with {weights} weights{frozen}" if weights else "")
        )
    lines.append(f"  fusion: {model.fusion.name}; {model.num_classes} classes")
    train = cfg.train
    evaluated = ", ".join(train.eval_splits) or "nothing"
    lines.append(f"  train: {train.steps} steps of batch {train.batch_size}, eval on {evaluated}")
    return "\n".join(lines)


def config_file_text(cfg: ml_collections.ConfigDict, dataset: str) -> str:
    """An ordinary `configs/*.py` file whose get_config() returns `cfg`."""
    body = pprint.pformat(as_json_dict(cfg), indent=1, width=96, sort_dicts=True)
    return (
        f'"""The config `mmjax train --data {dataset}` chose for dataset {dataset!r}.\n\n'
        "Edit it and train it like any config: mmjax train --config THIS_FILE --workdir DIR\n"
        '"""\n\nimport ml_collections\n\n'
        f"CONFIG = {body}\n\n\n"
        "def get_config(arg=None):\n"
        "    return ml_collections.ConfigDict(CONFIG)\n"
    )


def write_config_file(workdir: Path, cfg: ml_collections.ConfigDict, dataset: str) -> Path:
    """Writes `workdir/config.py`; refuses to replace a different one (a user's edit)."""
    path = Path(workdir) / CONFIG_FILE
    text = config_file_text(cfg, dataset)
    if path.is_file() and path.read_text(encoding="utf-8") != text:
        raise ConfigError(
            f"{path} exists and differs from the config chosen now (edited, or chosen for "
            f"other data): train it with `mmjax train --config {path} --workdir {workdir}`, "
            "or use a new --workdir"
        )
    output_folder(path.parent, "--workdir")
    path.write_text(text, encoding="utf-8")
    return path


def choose(
    dataset: str,
    workdir: Path,
    *,
    fusion: str = "late_concat",
    root: str = "",
    overrides: Mapping[str, Any] | None = None,
) -> ml_collections.ConfigDict:
    """The config chosen for `dataset` (under data root `root`) with `overrides`, also written
    to `workdir/config.py`, so `mmjax train --config` on that file repeats the run."""
    from mmjax.data.sources import open_source

    source = open_source(DataConfig(name=dataset, root=root))
    config = config_for_data(source, fusion=fusion, root=root, overrides=overrides)
    write_config_file(Path(workdir), config, dataset)
    return config
