"""Record encoding (an npz archive of named arrays, no pickle) and ArrayRecord shard I/O."""

import hashlib
import io
import threading
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from mmjax.errors import DataError

# np.load parses each array header with ast.literal_eval, and CPython 3.11's AST constructor
# is not safe across threads (python/cpython#106905: "AST constructor recursion depth
# mismatch"), which grain's prefetch threads hit. Decoding is cheap; serialise it.
_NPZ_LOCK = threading.Lock()


def encode_record(record: dict[str, np.ndarray]) -> bytes:
    """Serialises named arrays (numeric or fixed-width str, never object) to npz bytes."""
    arrays = {key: np.asarray(value) for key, value in record.items()}
    for key, array in arrays.items():
        if array.dtype == object:
            raise DataError(f"record field {key!r}: expected a numeric or str array, got objects")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def decode_record(data: bytes) -> dict[str, np.ndarray]:
    """Inverse of `encode_record`; object arrays are refused, so decoding runs no pickle."""
    try:
        with _NPZ_LOCK, np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(
            f"corrupt record ({len(data)} bytes): expected an np.savez archive of "
            f"non-object arrays ({e})"
        ) from None


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}.array_record-{index:05d}-of-{num_shards:05d}"


def write_shards(
    records: Iterable[dict[str, np.ndarray]],
    directory: str | Path,
    split: str,
    num_shards: int = 1,
) -> list[dict]:
    """Writes records round-robin into `num_shards` ArrayRecord files in `directory`.

    Returns one {"file", "num_records", "sha256"} per shard, `file` relative to `directory`.
    """
    if num_shards < 1:
        raise DataError(f"num_shards: expected >= 1, got {num_shards}")
    directory = Path(directory)
    names = [shard_name(split, i, num_shards) for i in range(num_shards)]
    writers = [ArrayRecordWriter(str(directory / name), "group_size:1") for name in names]
    counts = [0] * num_shards
    try:
        for i, record in enumerate(records):
            writers[i % num_shards].write(encode_record(record))
            counts[i % num_shards] += 1
    finally:
        for writer in writers:
            writer.close()
    return [
        {"file": name, "num_records": count, "sha256": sha256_file(directory / name)}
        for name, count in zip(names, counts, strict=True)
    ]


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
