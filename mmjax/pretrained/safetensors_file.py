"""Read .safetensors files into numpy arrays, bfloat16 included, without the safetensors package.

The format is an 8-byte little-endian header length N, N bytes of JSON {name: {"dtype", "shape",
"data_offsets"}, "__metadata__": {...}}, then the tensors' raw little-endian bytes. Parsing it
here takes a page, needs no extra dependency, and reads bf16 and fp8 through ml_dtypes (installed
with JAX), which `safetensors.numpy` cannot.
"""

import json
import math
import struct
import sys
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from mmjax.errors import CheckpointError

_MAX_HEADER_BYTES = 100_000_000  # the format's own limit

_DTYPES = {
    name: np.dtype(dtype)
    for name, dtype in [
        ("BOOL", np.bool_),
        ("U8", np.uint8),
        ("I8", np.int8),
        ("U16", np.uint16),
        ("I16", np.int16),
        ("U32", np.uint32),
        ("I32", np.int32),
        ("U64", np.uint64),
        ("I64", np.int64),
        ("F16", np.float16),
        ("BF16", ml_dtypes.bfloat16),
        ("F32", np.float32),
        ("F64", np.float64),
        ("F8_E4M3", ml_dtypes.float8_e4m3fn),
        ("F8_E5M2", ml_dtypes.float8_e5m2),
    ]
}


def load_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a .safetensors file as {name: numpy array}, in the header's order."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such safetensors file")
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(8)
        header_bytes = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 <= header_bytes <= min(size - 8, _MAX_HEADER_BYTES):
            raise CheckpointError(
                f"{path} is not a safetensors file or is truncated: it does not start with the "
                f"8-byte length of a JSON header that fits in its {size} bytes"
            )
        try:
            header = json.loads(file.read(header_bytes))
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
            raise CheckpointError(f"{path}: unreadable safetensors JSON header ({err})") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    data_start = 8 + header_bytes
    data = (
        np.memmap(path, np.uint8, mode="r", offset=data_start)
        if size > data_start
        else np.zeros(0, np.uint8)
    )
    return {name: _array(path, name, entry, data) for name, entry in header.items()}


def _array(path: Path, name: str, entry: Any, data: np.ndarray) -> np.ndarray:
    try:
        dtype = _DTYPES[entry["dtype"]]
        shape = tuple(entry["shape"])
        begin, end = entry["data_offsets"]
        if not all(type(n) is int and n >= 0 for n in (*shape, begin, end)):
            raise ValueError("shape and offsets must be non-negative integers")
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: tensor {name!r} has a malformed header entry {entry!r}: expected a dtype "
            f"among {', '.join(_DTYPES)}, a shape and data_offsets [begin, end] ({err!r})"
        ) from err
    nbytes = math.prod(shape) * dtype.itemsize
    if not begin <= end <= data.size or end - begin != nbytes:
        raise CheckpointError(
            f"{path}: tensor {name!r} ({entry['dtype']}, shape {list(shape)}) needs {nbytes} "
            f"bytes, but its data_offsets [{begin}, {end}] span {end - begin} of the "
            f"{data.size} stored: the file is corrupt or truncated"
        )
    array = np.array(data[begin:end].view(dtype).reshape(shape))
    return array if sys.byteorder == "little" else array.byteswap()
