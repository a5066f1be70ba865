"""Output folders: made on first use, or a clear error naming the option that gave the path."""

import os
from pathlib import Path

from mmjax.errors import ConfigError


def output_folder(path: str | Path, option: str) -> Path:
    """Make `path` (and its parents) if needed and check it can be written; a ConfigError names
    `option` (for example "--workdir") and the path when it cannot be."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"{option} {path}: cannot make this folder ({error.strerror}: {error.filename})"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: this folder is not writable")
    return path
