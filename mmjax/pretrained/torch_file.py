"""Read PyTorch weight files (`torch.save` output) into numpy arrays, without torch.

`torch.save` writes pickles, and unpickling calls whatever globals the file names, so a
downloaded weight file could run any code. The unpickler here admits only the globals that
rebuild plain tensors inside dicts and lists, and refuses every other one before it is called.

Both formats are read: the zip archive of torch >= 1.6 (`<name>/data.pkl` plus one
`<name>/data/<key>` entry per storage) and the legacy stream (pickles of the magic number, the
protocol version, the system info, the object and the storage keys, then each storage's element
count and raw little-endian bytes).
"""

import collections
import io
import pickle
import struct
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from mmjax.errors import CheckpointError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    f"{name}Storage": np.dtype(dtype)
    for name, dtype in [
        ("Float", np.float32),
        ("Half", np.float16),
        ("BFloat16", ml_dtypes.bfloat16),
        ("Double", np.float64),
        ("Long", np.int64),
        ("Int", np.int32),
        ("Short", np.int16),
        ("Char", np.int8),
        ("Byte", np.uint8),
        ("Bool", np.bool_),
    ]
}


@dataclass(frozen=True)
class _Storage:
    """A persistent-id reference to storage `key`, read after unpickling (lazily)."""

    key: str
    dtype: np.dtype
    start: int  # first element, nonzero only for the storage views of pre-1.0 legacy files
    numel: int


@dataclass(frozen=True)
class _Tensor:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _rebuild_tensor(storage: Any, offset: Any, shape: Any, stride: Any, *_: Any) -> _Tensor:
    """Stands in for torch._utils._rebuild_tensor_v2; the extra arguments are autograd state."""
    counts = lambda xs: isinstance(xs, tuple) and all(_count(x) for x in xs)
    if not (isinstance(storage, _Storage) and _count(offset) and counts(shape) and counts(stride)):
        raise ValueError(f"malformed tensor: offset {offset!r}, shape {shape!r}, stride {stride!r}")
    return _Tensor(storage, offset, shape, stride)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    """Stands in for torch._utils._rebuild_parameter(_with_state): a Parameter is its data."""
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): dtype for name, dtype in _STORAGE_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    """Admits only `_ALLOWED` globals; collects the storages the persistent ids name."""

    def __init__(self, file: BinaryIO, path: Path):
        super().__init__(file)
        self.path = path
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise CheckpointError(
                f"{self.path} names the global {module}.{name}, which is refused so that loading "
                f"cannot run code: only tensors of {', '.join(_STORAGE_DTYPES)} inside dicts and "
                "lists are read (a pickled module or a TorchScript archive is not a weight file; "
                "save the model's state_dict())"
            )
        return _ALLOWED[module, name]

    def persistent_load(self, pid: Any) -> _Storage:
        # zip: ("storage", type, key, location, numel); legacy adds the view metadata
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise ValueError(f"unknown persistent id {pid!r}")
        dtype, key, numel, view = pid[1], pid[2], pid[4], (pid[5:] or [None])[0]
        if not (isinstance(dtype, np.dtype) and isinstance(key, str) and _count(numel)):
            raise ValueError(f"malformed storage reference {pid!r}")
        root = self.storages.setdefault(key, _Storage(key, dtype, start=0, numel=numel))
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3 and all(_count(v) for v in view[1:])):
            raise ValueError(f"malformed storage view {view!r}")
        return _Storage(key, dtype, start=view[1], numel=view[2])  # (key, first element, count)


def load_torch_file(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a `torch.save` file as {dotted name: numpy array}, with no code run.

    Nested dicts and lists flatten to dotted names ({"model_state": {"fc.weight": w}} gives
    "model_state.fc.weight", list items their index), as in PyTorch's own state_dict names;
    values that are not tensors (a step count, hyperparameters) are dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such PyTorch weight file")
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        with path.open("rb") as file:
            return _load_legacy(file, path)
    except CheckpointError:
        raise
    except Exception as err:  # a corrupt pickle or archive raises many types; the cause is kept
        raise CheckpointError(
            f"{path}: corrupt or truncated PyTorch weight file ({type(err).__name__}: {err})"
        ) from err


def _load_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(
                f"{path} is a zip archive without a single <name>/data.pkl: not a torch.save file"
            )
        prefix = pickles[0].removesuffix("data.pkl")
        with archive.open(pickles[0]) as file:
            tensors = _flat_tensors(_Unpickler(file, path), path)
        byteorder = "little"
        if f"{prefix}byteorder" in names:
            byteorder = archive.read(f"{prefix}byteorder").decode()
        if byteorder not in ("little", "big"):
            raise CheckpointError(f"{path}: byteorder record {byteorder!r} is not little or big")
        read = lambda storage: archive.read(f"{prefix}data/{storage.key}")
        return _arrays(tensors, read, byteorder)


def _load_legacy(file: BinaryIO, path: Path) -> dict[str, np.ndarray]:
    header = _Unpickler(file, path)
    try:
        magic = header.load()
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(
            f"{path} is not a PyTorch weight file: expected a zip archive (torch >= 1.6) or a "
            f"legacy torch.save stream starting with its magic number; the file may be truncated "
            f"({type(err).__name__}: {err})"
        ) from err
    if magic != _LEGACY_MAGIC:
        raise CheckpointError(
            f"{path} is not a PyTorch weight file: neither a zip archive (torch >= 1.6) nor a "
            f"legacy torch.save stream (it starts with a pickled {type(magic).__name__}, not the "
            "magic number)"
        )
    protocol = header.load()
    if protocol != _LEGACY_PROTOCOL:
        raise CheckpointError(f"{path}: legacy protocol version {protocol!r}, expected 1001")
    header.load()  # system info; storages are little-endian whatever the writer's byte order
    unpickler = _Unpickler(file, path)
    tensors = _flat_tensors(unpickler, path)
    keys = _Unpickler(file, path).load()
    spans = {}  # key: (file position, bytes); read when its tensors are copied out
    size = path.stat().st_size
    for key in keys:
        storage = unpickler.storages[key]  # a KeyError names a storage no tensor refers to
        (numel,) = struct.unpack("<q", file.read(8))
        spans[key] = (file.tell(), numel * storage.dtype.itemsize)
        if not 0 <= spans[key][1] <= size - file.tell():
            raise ValueError(f"storage {key} claims {numel} elements, past the end of the file")
        file.seek(spans[key][1], io.SEEK_CUR)

    def read(storage: _Storage) -> bytes:
        position, nbytes = spans[storage.key]
        file.seek(position)
        return file.read(nbytes)

    return _arrays(tensors, read, "little")


def _flat_tensors(unpickler: _Unpickler, path: Path) -> dict[str, _Tensor]:
    obj = unpickler.load()
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__.lstrip('_')}, expected a dict of tensors "
            "(a state_dict)"
        )
    flat: dict[str, _Tensor] = {}

    def visit(value: Any, name: str) -> None:
        if isinstance(value, _Tensor):
            if name in flat:
                raise CheckpointError(f"{path}: two tensors flatten to the same name {name!r}")
            flat[name] = value
        elif isinstance(value, Mapping | list | tuple):
            items = value.items() if isinstance(value, Mapping) else enumerate(value)
            for key, item in items:
                visit(item, f"{name}.{key}" if name else str(key))

    visit(obj, "")
    return flat


def _arrays(
    tensors: dict[str, _Tensor], read: Callable[[_Storage], bytes], byteorder: str
) -> dict[str, np.ndarray]:
    """Each tensor copied out of its storage; a storage is held only until its last tensor."""
    uses = collections.Counter(tensor.storage.key for tensor in tensors.values())
    cache: dict[str, bytes] = {}
    arrays = {}
    for name, tensor in tensors.items():
        key = tensor.storage.key
        if key not in cache:
            cache[key] = read(tensor.storage)
        try:
            arrays[name] = _array(tensor, cache[key])
        except ValueError as err:
            raise ValueError(f"tensor {name}: {err}") from err
        uses[key] -= 1
        if not uses[key]:
            del cache[key]
        if byteorder != sys.byteorder:
            arrays[name] = arrays[name].byteswap()
    return arrays


def _array(tensor: _Tensor, raw: bytes) -> np.ndarray:
    """Copy `tensor` out of its storage's bytes, checking it lies inside them (as_strided won't)."""
    storage, shape, stride = tensor.storage, tensor.shape, tensor.stride
    if len(raw) % storage.dtype.itemsize:
        raise ValueError(f"storage {storage.key} of {len(raw)} bytes is not {storage.dtype} data")
    data = np.frombuffer(raw, storage.dtype)[storage.start :][: storage.numel]
    if len(shape) != len(stride):
        raise ValueError(f"shape {shape} and stride {stride} differ in length")
    if 0 in shape:
        return np.zeros(shape, storage.dtype)
    last = tensor.offset + sum((n - 1) * s for n, s in zip(shape, stride))
    if last >= data.size:
        raise ValueError(
            f"shape {shape}, stride {stride} and offset {tensor.offset} reach element {last} "
            f"of storage {storage.key}, which holds {data.size}"
        )
    strides = [s * storage.dtype.itemsize for s in stride]
    return np.lib.stride_tricks.as_strided(data[tensor.offset :], shape, strides).copy()
