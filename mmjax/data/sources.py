"""Where datasets live, what a registered (built-in) dataset provides, and which DataSource a
run's `data` config names: cached features, a built-in dataset or an imported one."""

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmjax.config import DataConfig
from mmjax.data import features_store
from mmjax.data.source import DataSource
from mmjax.errors import DataError
from mmjax.registry import DATASETS


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What a dataset builder registers: how to build it and how to open what it built."""

    prepare: Callable[..., dict[str, Any]]  # (root, *, small, seed, progress) -> info
    source: Callable[[Path], DataSource]  # DataError naming the prepare command if absent


def data_root(configured: str = "") -> Path:
    """The data root: `configured`, else $MMJAX_DATA, else ~/.cache/mmjax."""
    return Path(configured or os.environ.get("MMJAX_DATA") or Path.home() / ".cache" / "mmjax")


def open_source(cfg: DataConfig) -> DataSource:
    """What `cfg` reads: its cached-features directory, else the built-in or imported dataset
    `cfg.name` under the data root."""
    if cfg.features:
        return features_store.open_store(Path(cfg.features))
    root = data_root(cfg.root)
    if cfg.name in DATASETS:
        return DATASETS.get(cfg.name).source(root)
    from mmjax.data.imports.stored import open_imported

    if (root / cfg.name / "info.json").is_file():
        return open_imported(root, cfg.name)
    raise DataError(
        f"data.name: no dataset {cfg.name!r}; built-in: {', '.join(DATASETS.names())} "
        f"(`mmjax data prepare NAME`); imported under {root}: "
        f"{', '.join(imported_names(root)) or 'none'} (`mmjax data import {cfg.name} ...`)"
    )


def imported_names(root: Path) -> list[str]:
    """Names of the imported datasets under `root`, built-in datasets (a builder may import
    the files it writes) left out."""
    from mmjax.data.imports.stored import is_imported

    if not Path(root).is_dir():
        return []
    found = (p.name for p in Path(root).iterdir() if p.name not in DATASETS and is_imported(p))
    return sorted(found)


def load_info(root: Path, name: str) -> dict[str, Any]:
    """The info of dataset `name` (built-in or imported) under `root`."""
    return open_source(DataConfig(name=name, root=str(root))).info


def list_datasets(root: Path) -> list[dict[str, Any]]:
    """Every built-in dataset built under `root` and every imported one: name, kind,
    modalities, classes, records per split and where it came from."""
    rows = []
    for name in DATASETS.names():
        try:
            rows.append(_row(DATASETS.get(name).source(root), "built-in"))
        except DataError:  # not built there
            continue
    for name in imported_names(root):
        from mmjax.data.imports.stored import open_imported

        try:
            rows.append(_row(open_imported(root, name), "imported"))
        except DataError as err:
            rows.append({"name": name, "kind": "imported", "error": str(err)})
    return rows


def _row(source: DataSource, kind: str) -> dict[str, Any]:
    info = source.info
    origin = info.get("source", {})
    return {
        "name": source.name,
        "kind": kind,
        "modalities": sorted(info["modalities"]),
        "classes": info["num_classes"],
        "splits": {s: e.get("num_records", 0) for s, e in info["splits"].items()},
        "source": origin.get("description", "mmjax data prepare")
        if kind == "imported"
        else f"mmjax data prepare {source.name}",
        "path": str(source.directory),
    }
