"""A manifest (CSV, JSONL or Parquet; one row per example) as an import Table.

Modality columns are those `--map` names, else the columns named after a modality (`image`,
`audio`, `video`, `text`), else a column whose every non-empty cell is a path with a known
media extension (the modality of that extension). Media cells are paths, relative ones
resolved against the manifest's folder; an empty cell is a missing modality for that row.
"""

import csv
import json
from collections.abc import Callable
from pathlib import Path

from mmjax.checksum import sha256_file
from mmjax.data.imports.table import MODALITIES, Table
from mmjax.data.media import EXTENSIONS
from mmjax.errors import ConfigError, DataError

FORMATS = {".csv": "CSV", ".jsonl": "JSONL", ".json": "JSONL", ".parquet": "Parquet"}


def manifest_table(
    path: str | Path,
    *,
    label: str = "label",
    mapping: dict[str, str] | None = None,
    group_by: str = "",
    split_column: str = "split",
) -> Table:
    """The rows of manifest `path`; ConfigError naming the column when one is missing."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--manifest: file {str(path)!r} does not exist")
    rows = _read(path)
    columns = list(rows[0]) if rows else []
    if not rows:
        raise DataError(f"--manifest {path}: no rows")
    mapping = dict(mapping or {})
    label = mapping.pop("label", label)
    group_by = mapping.pop("group", group_by)
    _require_column(label, columns, "--label", path)
    if group_by:
        _require_column(group_by, columns, "--group-by", path)
    modality_columns = _modality_columns(
        rows, columns, mapping, exclude={label, group_by}, path=path
    )
    cells = {m: [_cell(row.get(c)) for row in rows] for m, c in modality_columns.items()}
    has_split = split_column in columns and split_column not in modality_columns.values()
    return Table(
        source=f"manifest {path.absolute()}",
        columns=modality_columns,
        labels=[_text(row.get(label)) for row in rows],
        row_names=[f"{path.name} row {i + 1}" for i in range(len(rows))],
        row=_row_reader(cells),
        splits=[_text(row.get(split_column)) for row in rows] if has_split else None,
        groups=[_text(row.get(group_by)) for row in rows] if group_by else None,
        base_dir=path.parent.absolute(),
        sha256=sha256_file(path),
        settings={"label": label, "group_by": group_by, "map": mapping},
    )


def _row_reader(cells: dict[str, list]) -> Callable[[int], dict]:
    return lambda i: {m: values[i] for m, values in cells.items()}


def _read(path: Path) -> list[dict]:
    """The manifest's rows as dicts of column -> value."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(
            f"--manifest {path}: unsupported file type {path.suffix!r}; expected one of "
            f"{', '.join(sorted(FORMATS))}"
        )
    try:
        if kind == "CSV":
            with path.open(encoding="utf-8-sig", newline="") as f:
                return list(csv.DictReader(f))
        if kind == "JSONL":
            return _read_jsonl(path)
        return _read_parquet(path)
    except UnicodeDecodeError as err:
        raise DataError(f"--manifest {path}: not UTF-8 text ({err})") from None
    except csv.Error as err:
        raise DataError(f"--manifest {path}: not a readable CSV file ({err})") from None


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"--manifest {path}, line {number}: not JSON ({err})") from None
            if not isinstance(row, dict):
                raise DataError(f"--manifest {path}, line {number}: expected a JSON object")
            rows.append(row)
    return rows


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading a Parquet manifest needs pyarrow: `pip install pyarrow`") from None
    try:
        return pq.read_table(path).to_pylist()
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"--manifest {path}: not a readable Parquet file ({err})") from None


def _require_column(column: str, columns: list[str], flag: str, path: Path) -> None:
    if column not in columns:
        raise ConfigError(
            f"{flag}: {path.name} has no column {column!r}; its columns: {', '.join(columns)}"
        )


def _modality_columns(
    rows: list[dict], columns: list[str], mapping: dict[str, str], *, exclude: set, path: Path
) -> dict[str, str]:
    """modality -> column: `--map`'s, else same-named columns, else columns of media paths."""
    for modality, column in mapping.items():
        _require_column(column, columns, f"--map {modality}={column}", path)
    if mapping:
        return {m: mapping[m] for m in MODALITIES if m in mapping}
    found = {m: m for m in MODALITIES if m in columns and m not in exclude}
    for column in columns:
        if column in exclude or column in found.values():
            continue
        kind = _media_kind([row.get(column) for row in rows])
        if kind and kind not in found:
            found[kind] = column
    if not found:
        raise ConfigError(
            f"--manifest {path.name}: no modality column; name columns image, audio, video or "
            f"text, or map them with --map text=COLUMN,image=COLUMN (its columns: "
            f"{', '.join(columns)})"
        )
    return {m: found[m] for m in MODALITIES if m in found}


def _media_kind(values: list) -> str:
    """The one media modality of a column whose non-empty cells are all paths with a known
    extension, else ""."""
    kinds = {
        EXTENSIONS.get(Path(v).suffix.lower(), "?") for v in values if isinstance(v, str) and v
    }
    non_text = {v for v in values if v not in (None, "") and not isinstance(v, str)}
    if len(kinds) == 1 and not non_text and (kind := kinds.pop()) in ("image", "audio", "video"):
        return kind
    return ""


def _cell(value: object) -> str | bytes | None:
    """A raw cell: None for an empty one (a missing modality)."""
    if value is None or (isinstance(value, float) and value != value):  # NaN from Parquet
        return None
    if isinstance(value, bytes):
        return value or None
    text = str(value).strip()
    return text or None


def _text(value: object) -> str:
    cell = _cell(value)
    return "" if cell is None else cell if isinstance(cell, str) else cell.decode()
