"""Record encoding (an npz archive of named arrays, no pickle) and ArrayRecord shard I/O."""

import io
import lzma
import math
import re
import struct
import threading
import tokenize
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from mmjax.checksum import sha256_file
from mmjax.errors import DataError

# np.load parses each array header with ast.literal_eval, and CPython 3.11's AST constructor
# is not safe across threads (python/cpython#106905: "AST constructor recursion depth
# mismatch"), which grain's prefetch threads hit. Decoding is cheap; serialise it.
_NPZ_LOCK = threading.Lock()

# What np.load and zipfile raise on hostile bytes: bad headers (ValueError), truncated data
# (EOFError, OSError), broken zip structure or compression (BadZipFile, zlib/lzma errors,
# NotImplementedError for unknown methods, RuntimeError for encrypted members), a header
# that declares an array too large to allocate (MemoryError), and a header that numpy's
# fallback tokenizer chokes on (TokenError, IndentationError).
_CORRUPT = (
    ValueError,
    SyntaxError,
    tokenize.TokenError,
    OSError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    NotImplementedError,
    RuntimeError,
    MemoryError,
)
# The .npy magic of format 1.0 and the header np.save writes for a C-order array of a plain
# dtype (bool, signed/unsigned integers, floats, complex, bytes, str), padded with spaces.
_NPY_V1 = b"\x93NUMPY\x01\x00"
_PLAIN_NPY_HEADER = re.compile(
    rb"\{'descr': '(?P<descr>[<>|][biufcSU]\d+)', 'fortran_order': False, "
    rb"'shape': \((?P<shape>(?:\d+, ?)*\d*)\), \} *\n"
)
# np.savez writes a zip archive; np.load would also take a bare .npy or (refused) a pickle.
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


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
    """Inverse of `encode_record`; object arrays are refused, so decoding runs no pickle.
    Bytes that are not such an archive raise a DataError."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DataError(f"record: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    expected = "expected an np.savez archive of non-object arrays"
    if not data.startswith(_ZIP_MAGIC):
        raise DataError(f"corrupt record ({len(data)} bytes): {expected} (no zip header)")
    try:
        record = _read_plain_npz(data)
        if record is None:
            with _NPZ_LOCK, np.load(io.BytesIO(data), allow_pickle=False) as archive:
                record = {key: archive[key] for key in archive.files}
    except _CORRUPT as e:
        raise DataError(
            f"corrupt record ({len(data)} bytes): {expected} ({type(e).__name__}: {e})"
        ) from None
    for key, value in record.items():
        if not isinstance(value, np.ndarray):  # a zip member that is not an .npy array
            raise DataError(f"corrupt record: member {key!r} is not an .npy array; {expected}")
    return record


def _stored_member(data: bytes, member: zipfile.ZipInfo) -> bytes | None:
    """The bytes of an uncompressed, unencrypted zip member (how np.savez stores them), sliced
    from the archive with the checks `ZipFile.read` makes (local header signature and name,
    bounds, CRC-32), which it does at 4x the cost through a file object per member; None for
    any other member (`ZipFile.read` reads it)."""
    if member.compress_type != zipfile.ZIP_STORED or member.flag_bits & 0x1:
        return None
    offset = member.header_offset
    if offset < 0 or offset + 30 > len(data) or data[offset : offset + 4] != _ZIP_MAGIC[0]:
        raise zipfile.BadZipFile(f"member {member.filename!r}: bad local file header")
    name_size, extra_size = struct.unpack_from("<HH", data, offset + 26)
    name = data[offset + 30 : offset + 30 + name_size]
    if name != member.orig_filename.encode("utf-8" if member.flag_bits & 0x800 else "cp437"):
        raise zipfile.BadZipFile(f"member {member.filename!r}: name differs in its local header")
    start = offset + 30 + name_size + extra_size
    raw = data[start : start + member.compress_size]
    if len(raw) != member.compress_size or member.compress_size != member.file_size:
        raise zipfile.BadZipFile(f"member {member.filename!r}: truncated")
    if zlib.crc32(raw) != member.CRC:
        raise zipfile.BadZipFile(f"member {member.filename!r}: bad CRC-32")
    return raw


def _read_plain_npz(data: bytes) -> dict[str, np.ndarray] | None:
    """The arrays of an archive as `encode_record` writes it (.npy members, format 1.0, C
    order, plain numeric or str dtypes), parsed without np.load; None for any other archive,
    which np.load then reads (or refuses). 3x faster than np.load, which parses each header
    with ast.literal_eval under a process-wide lock: decoding held grain's read threads, and
    the training loop's own Python (dispatch, prefetch) waited on them for the GIL."""
    record = {}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for member in archive.infolist():
            raw = _stored_member(data, member)
            if raw is None:
                raw = archive.read(member)
            header_end = 10 + int.from_bytes(raw[8:10], "little")
            header = _PLAIN_NPY_HEADER.fullmatch(raw[10:header_end])
            if not member.filename.endswith(".npy") or raw[:8] != _NPY_V1 or header is None:
                return None
            dtype = np.dtype(header["descr"].decode())
            shape = tuple(int(n) for n in header["shape"].split(b",") if n.strip())
            count = math.prod(shape)
            if len(raw) - header_end != count * dtype.itemsize:
                raise ValueError(f"member {member.filename!r}: data does not match its header")
            array = np.frombuffer(raw, dtype, count, header_end).reshape(shape)
            record[member.filename.removesuffix(".npy")] = array.copy()  # writable, as np.load
    return record


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
