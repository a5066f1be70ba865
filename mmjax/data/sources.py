"""Where datasets live and how a split is opened as a grain random-access source."""

import json
import os
from pathlib import Path

import grain

from mmjax.errors import DataError
from mmjax.registry import DATASETS


def data_root(configured: str = "") -> Path:
    """The data root: `configured`, else $MMJAX_DATA, else ~/.cache/mmjax."""
    return Path(configured or os.environ.get("MMJAX_DATA") or Path.home() / ".cache" / "mmjax")


def load_info(root: Path, name: str) -> dict:
    """A prepared dataset's info.json; DataError naming the prepare command when it is absent."""
    DATASETS.get(name)  # an unknown name fails with the registered choices
    path = Path(root) / name / "info.json"
    if not path.is_file():
        raise DataError(
            f"dataset {name!r} is not prepared under {root}: run `mmjax data prepare {name}`"
            f" (or set --data-dir / MMJAX_DATA to where it was prepared)"
        )
    return json.loads(path.read_text())


def open_split(root: Path, name: str, split: str) -> grain.sources.ArrayRecordDataSource:
    """Random-access source over one split's ArrayRecord shards."""
    info = load_info(root, name)
    if split not in info["splits"]:
        raise DataError(
            f"split {split!r} of dataset {name!r} does not exist; "
            f"available: {', '.join(sorted(info['splits']))}"
        )
    shards = [Path(root) / name / s["file"] for s in info["splits"][split]["shards"]]
    missing = [str(p) for p in shards if not p.is_file()]
    if missing:
        raise DataError(f"dataset {name!r} split {split!r} is missing shard(s) {missing}: "
                        f"run `mmjax data prepare {name}` again")
    return grain.sources.ArrayRecordDataSource([str(p) for p in shards])
