"""data/records.py: records decode to what np.load reads from the same bytes, through the fast
reader for archives as `encode_record` writes them and through np.load for any other."""

import io
import zipfile

import numpy as np
import pytest

from mmjax.data import records
from mmjax.data.records import decode_record, encode_record
from mmjax.errors import DataError


def _np_load(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        np.testing.assert_array_equal(got[key], value)


def test_plain_records_take_the_fast_reader_and_equal_np_load():
    rng = np.random.default_rng(0)
    record = {
        "audio": rng.integers(-(2**15), 2**15, 8000).astype(np.int16),
        "image": rng.random((8, 8, 3), np.float32),
        "label": np.int64(7),
        "name": np.array("spoken 'seven'"),
        "mask": np.array([True, False]),
        "empty": np.zeros((0, 4), np.float64),
        "big_endian": np.arange(5, dtype=">u4"),
        "complex": np.array([1 + 2j], np.complex64),
    }
    data = encode_record(record)
    fast = records._read_plain_npz(data)
    assert fast is not None
    _assert_same(fast, _np_load(data))
    _assert_same(decode_record(data), _np_load(data))
    fast["image"][0, 0, 0] = 2.0  # writable, as np.load's arrays are


def test_other_archives_go_to_np_load():
    buffer = io.BytesIO()
    np.savez(buffer, fortran=np.asfortranarray(np.arange(6.0).reshape(2, 3)), ok=np.ones(3))
    data = buffer.getvalue()
    assert records._read_plain_npz(data) is None
    _assert_same(decode_record(data), _np_load(data))


def test_a_member_shorter_than_its_header_is_a_corrupt_record():
    data = encode_record({"audio": np.zeros(100, np.float32)})
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        member = archive.read("audio.npy")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("audio.npy", member[:-8])  # a valid zip, one value short
    with pytest.raises(DataError, match="corrupt record"):
        decode_record(buffer.getvalue())


def test_a_changed_byte_in_a_stored_member_is_a_corrupt_record():
    """The fast reader slices np.savez's uncompressed members out of the archive itself; it
    keeps ZipFile.read's CRC-32 check, so a flipped bit in an array's data is caught."""
    data = encode_record({"audio": np.arange(100, dtype=np.float32)})
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        (member,) = archive.infolist()
        assert records._stored_member(data, member) == archive.read(member)
    position = data.index(np.float32(42).tobytes())
    corrupted = data[:position] + bytes([data[position] ^ 1]) + data[position + 1 :]
    with pytest.raises(DataError, match=r"corrupt record.*CRC"):
        decode_record(corrupted)
