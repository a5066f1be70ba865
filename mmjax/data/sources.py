"""Where datasets live, what a registered dataset provides, and how a split is opened."""

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grain

from mmjax.config import DataConfig
from mmjax.data import features_store
from mmjax.registry import DATASETS


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What a dataset builder registers: how to build it and how to find what it built."""

    prepare: Callable[..., dict[str, Any]]  # (root, *, small, seed, progress) -> info
    load_info: Callable[[Path], dict[str, Any]]  # DataError naming the prepare command if absent
    shard_paths: Callable[[Path, str], list[Path]]  # one split's ArrayRecord files
    verify: Callable[[Path], None]  # DataError naming a shard whose checksum differs


def data_root(configured: str = "") -> Path:
    """The data root: `configured`, else $MMJAX_DATA, else ~/.cache/mmjax."""
    return Path(configured or os.environ.get("MMJAX_DATA") or Path.home() / ".cache" / "mmjax")


def load_info(root: Path, name: str) -> dict[str, Any]:
    """The info dict of prepared dataset `name` under `root`."""
    return DATASETS.get(name).load_info(Path(root))


def dataset_info(cfg: DataConfig) -> dict[str, Any]:
    """The info of what `cfg` reads: its cached-features directory, else the dataset."""
    if cfg.features:
        return features_store.load_info(Path(cfg.features))
    return load_info(data_root(cfg.root), cfg.name)


def verify(cfg: DataConfig) -> None:
    """DataError naming the first shard of what `cfg` reads whose checksum differs."""
    if cfg.features:
        features_store.verify(Path(cfg.features))
    else:
        DATASETS.get(cfg.name).verify(data_root(cfg.root))


def open_split(cfg: DataConfig, split: str) -> grain.sources.ArrayRecordDataSource:
    """Random-access source over one split's ArrayRecord shards."""
    if cfg.features:
        paths = features_store.shard_paths(Path(cfg.features), split)
    else:
        paths = DATASETS.get(cfg.name).shard_paths(data_root(cfg.root), split)
    return grain.sources.ArrayRecordDataSource([str(p) for p in paths])


def build_checksums(info: dict[str, Any]) -> dict[str, Any]:
    """{name, version, shards: {split: {file: sha256}}}: what identifies a dataset build. For
    a cached-features store, the build it was extracted from."""
    if "source" in info:
        return info["source"]
    return {
        "name": info["name"],
        "version": info.get("version"),
        "shards": {
            split: {s["file"]: s["sha256"] for s in entry["shards"]}
            for split, entry in info["splits"].items()
        },
    }
