"""An imported dataset on disk: `root/NAME/info.json` (with "kind": "imported") and its shards."""

import json
from pathlib import Path

from mmjax.data.source import DataSource
from mmjax.errors import DataError

KIND = "imported"
FORMAT = 1  # the layout of records and info.json this mmjax writes and reads


def is_imported(directory: Path) -> bool:
    """Whether `directory` holds an imported dataset (a readable info.json of this kind)."""
    try:
        info = json.loads((Path(directory) / "info.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(info, dict) and info.get("kind") == KIND


def open_imported(root: Path, name: str) -> DataSource:
    """The imported dataset `name` under `root`; DataError if it is unreadable or of another
    format."""
    path = Path(root) / name / "info.json"
    remedy = f"import it again with `mmjax data import {name} ... --overwrite`"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} is missing: {name!r} is not imported under {root}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable ({err}); {remedy}") from None
    if not isinstance(info, dict) or info.get("kind") != KIND:
        raise DataError(f'{path}: not an imported dataset (no "kind": "{KIND}"); {remedy}')
    if info.get("format") != FORMAT:
        raise DataError(
            f"{path}: written in import format {info.get('format')}, this mmjax reads "
            f"{FORMAT}; {remedy}"
        )
    return DataSource(Path(root) / name, info, remedy)
