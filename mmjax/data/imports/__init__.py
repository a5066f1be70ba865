"""Bring your own data: a manifest, a folder, a TFDS or a Hugging Face dataset becomes an
mmjax dataset under the data root, trained on like the built-in ones (`mmjax train --data`)."""

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmjax.data.imports.build import ImportOptions, check_name, import_table
from mmjax.data.imports.table import Table
from mmjax.data.sources import data_root
from mmjax.errors import ConfigError


def _options(settings: dict[str, Any]) -> ImportOptions:
    try:
        return ImportOptions(**settings)
    except TypeError as err:  # an unknown setting
        valid = ", ".join(f.name for f in dataclasses.fields(ImportOptions))
        raise ConfigError(f"import setting: {err}; valid settings: {valid}") from None


def _import(
    name: str,
    read: Callable[[], Table],
    data_dir: str,
    overwrite: bool,
    progress: bool,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Checks the settings and the name, then reads the table and imports it."""
    options = _options(settings)
    check_name(name)
    root = data_root(data_dir)
    return import_table(name, read(), options, root, overwrite=overwrite, progress=progress)


def import_manifest(
    name: str,
    path: str | Path,
    *,
    label: str = "label",
    mapping: dict[str, str] | None = None,
    group_by: str = "",
    data_dir: str = "",
    overwrite: bool = False,
    progress: bool = True,
    **settings: Any,
) -> dict[str, Any]:
    """Import a CSV / JSONL / Parquet manifest (one row per example) as dataset `name`;
    `settings` are ImportOptions fields (image_size=..., tokenizer=..., on_error=...)."""
    from mmjax.data.imports.manifest import manifest_table

    def read() -> Table:
        return manifest_table(path, label=label, mapping=mapping, group_by=group_by)

    return _import(name, read, data_dir, overwrite, progress, settings)


def import_folder(
    name: str,
    folder: str | Path,
    *,
    data_dir: str = "",
    overwrite: bool = False,
    progress: bool = True,
    **settings: Any,
) -> dict[str, Any]:
    """Import `folder/[split/]CLASS/FILE` as dataset `name`."""
    from mmjax.data.imports.folder import folder_table

    return _import(name, lambda: folder_table(folder), data_dir, overwrite, progress, settings)


def import_tfds(
    name: str,
    spec: str,
    *,
    tfds_dir: str | Path,
    mapping: dict[str, str],
    data_dir: str = "",
    overwrite: bool = False,
    progress: bool = True,
    **settings: Any,
) -> dict[str, Any]:
    """Import TFDS dataset `spec` ("NAME[:CONFIG]"), prepared in array_record format under
    `tfds_dir`, with its features mapped by `mapping` ({"image": "image", "label": ...})."""
    from mmjax.data.imports.external import tfds_table

    read = lambda: tfds_table(spec, tfds_dir, mapping)
    return _import(name, read, data_dir, overwrite, progress, settings)


def import_hf(
    name: str,
    path: str | Path,
    *,
    mapping: dict[str, str],
    data_dir: str = "",
    overwrite: bool = False,
    progress: bool = True,
    **settings: Any,
) -> dict[str, Any]:
    """Import a Hugging Face dataset saved with `save_to_disk`, or a local imagefolder."""
    from mmjax.data.imports.external import hf_table

    return _import(name, lambda: hf_table(path, mapping), data_dir, overwrite, progress, settings)
