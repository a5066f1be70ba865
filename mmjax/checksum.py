"""The one sha256 of a file: shard checks, imported sources, published and catalog weights."""

import hashlib
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of the file at `path`, streamed (a shard or weight file may not fit in memory)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
