"""Where datasets live, what a registered dataset provides, and how a split is opened."""

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grain

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


def open_split(root: Path, name: str, split: str) -> grain.sources.ArrayRecordDataSource:
    """Random-access source over one split's ArrayRecord shards."""
    paths = DATASETS.get(name).shard_paths(Path(root), split)
    return grain.sources.ArrayRecordDataSource([str(p) for p in paths])
