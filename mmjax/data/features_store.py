"""A directory of cached encoder outputs, written by `mmjax features extract`.

Layout: DIR/info.json and DIR/<split>.array_record-*; each record is the dataset's record with
every cached modality `m` replaced by its encoder's Features: `m.tokens` [T, D] float32,
`m.token_mask` [T] bool and `m.pooled` [D] float32. info.json is the source dataset's info
plus `cached` ({m: {"encoder": spec, "pretrained": name}}) and `source` (its build checksums).
"""

import dataclasses
import json
from pathlib import Path
from typing import Any

from mmjax.config import ModelConfig
from mmjax.data.records import sha256_file
from mmjax.errors import ConfigError, DataError

INFO = "info.json"
FEATURE_KEYS = ("tokens", "token_mask", "pooled")


def cached_keys(modality: str) -> tuple[str, ...]:
    return tuple(f"{modality}.{k}" for k in FEATURE_KEYS)


def load_info(directory: Path) -> dict[str, Any]:
    path = Path(directory) / INFO
    if not path.is_file():
        raise DataError(
            f"data.features: {directory} holds no cached features (no {INFO}); write them with "
            "`mmjax features extract --config ... --out DIR`"
        )
    return json.loads(path.read_text())


def shard_paths(directory: Path, split: str) -> list[Path]:
    splits = load_info(directory)["splits"]
    if split not in splits:
        raise ConfigError(
            f"data.features: {directory} has no split {split!r} (it has {', '.join(splits)})"
        )
    return [Path(directory) / shard["file"] for shard in splits[split]["shards"]]


def verify(directory: Path) -> None:
    for split, entry in load_info(directory)["splits"].items():
        for shard in entry["shards"]:
            if sha256_file(Path(directory) / shard["file"]) != shard["sha256"]:
                raise DataError(
                    f"data.features: {directory}/{shard['file']} ({split}) changed since it "
                    "was written (sha256 differs); extract the features again"
                )


def encoder_spec(cfg: ModelConfig, modality: str) -> dict[str, Any]:
    """The JSON form of `cfg`'s encoder for `modality`, as stored with cached features."""
    component = dict(cfg.encoders)[modality]
    fields = json.loads(json.dumps(dataclasses.asdict(component.cfg)))
    return {"name": component.name, **fields}


def check_cached_encoder(modality: str, cached: dict[str, Any], cfg: ModelConfig) -> None:
    """ConfigError unless the model's encoder for `modality` is frozen and is the one (same
    config, same published weights) whose outputs were cached."""
    if modality not in cfg.frozen:
        raise ConfigError(
            f"model.frozen must include {modality!r}: data.features holds its encoder's outputs, "
            "so that encoder cannot train"
        )
    if encoder_spec(cfg, modality) != cached["encoder"]:
        raise ConfigError(
            f"model.encoders.{modality} differs from the encoder whose features were cached "
            f"({cached['encoder']})"
        )
    if dict(cfg.pretrained).get(modality, "") != cached["pretrained"]:
        raise ConfigError(
            f"model.pretrained.{modality} differs from the cached features' "
            f"({cached['pretrained']!r})"
        )
