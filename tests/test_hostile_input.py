"""Hostile input: generated malformed batches, configs, dataset records and CLI argument lists.

Every one must end in an mmjax error with a message (MmjaxError; argparse's usage error for a
malformed command line) or be accepted when it is valid: never another exception (a raw
traceback), a hang or a crash. Over 1,000 generated examples in all (see EXAMPLES); the runs
are derandomized so CI sees the same inputs every time.
"""

import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import math
import pickle
import re
import signal
import sys
import warnings
import zipfile
from pathlib import Path
from unittest import mock

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import mmjax
from mmjax import cli, features, predict
from mmjax.config import (
    ExperimentConfig,
    apply_overrides,
    experiment_from,
    load_config_file,
    set_value,
)
from mmjax.data.records import decode_record, encode_record
from mmjax.data.transforms import Decode
from mmjax.errors import ConfigError, DataError, InputError, MmjaxError
from mmjax.models import validate_batch
from mmjax.train import loop, sweep

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {"batch": 300, "config": 200, "override": 150, "record": 300, "cli": 250}
SECONDS_PER_EXAMPLE = 10  # a hang guard (SIGALRM); examples take milliseconds


def _settings(name: str) -> settings:
    return settings(
        max_examples=EXAMPLES[name],
        deadline=5000,  # ms; each example takes a few ms, so this only trips on a near-hang
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


class Hang(BaseException):
    """Raised in a body that runs too long; a BaseException, so no `except Exception` (or
    `except OSError`, as TimeoutError would be) in the code under test can swallow it."""


@contextlib.contextmanager
def _time_limit(seconds: float = SECONDS_PER_EXAMPLE):
    """Fail (rather than hang) when the body runs longer than `seconds` (where SIGALRM is)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum, frame):
        raise Hang(f"hostile input ran over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _assert_mmjax_error(err: MmjaxError, kind: type[MmjaxError]) -> None:
    assert isinstance(err, kind), f"expected {kind.__name__}, got {type(err).__name__}: {err}"
    assert str(err).strip(), f"{type(err).__name__} without a message"
    event(f"rejected: {str(err).split(':')[0][:40]}")  # --hypothesis-show-statistics


# ---------------------------------------------------------------------------------------------
# Hostile values shared by the generators
# ---------------------------------------------------------------------------------------------

DTYPES = (
    "float32", "float64", "float16", "bfloat16", "int8", "int32", "int64", "uint8", "uint64",
    "bool", "complex64", "object", "U3", "S2", "V4", "datetime64[s]", "f4,i4",
)  # fmt: skip


def _array(dtype: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A small array of `dtype` (any kind, incl. object, strings, bfloat16) and `shape`."""
    values = np.random.default_rng(seed).uniform(-3, 12, shape)
    if dtype == "object":
        out = np.empty(shape, object)
        out[...] = None
        return out
    if dtype in ("U3", "S2"):
        return np.full(shape, "ab", dtype)
    if dtype in ("V4", "datetime64[s]", "f4,i4"):
        return np.zeros(shape, dtype)
    dt = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    return values.astype(dt)


shapes = st.lists(st.integers(0, 4), max_size=5).map(tuple)
arrays = st.builds(_array, st.sampled_from(DTYPES), shapes, st.integers(0, 2**16))
python_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=6),
    st.binary(max_size=6),
    st.lists(st.floats(allow_nan=True), max_size=4),
    st.lists(st.lists(st.integers(-5, 5), max_size=3), max_size=3),  # often ragged
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(
        (
            [[1.0], [1.0, 2.0]],  # ragged
            [[0.5] * 4, "abcd"],
            [[10**30, 1]],  # beyond int64
            [None, None],
            [{"a": 1}],
            [[[]]],
            object(),
        )
    ),
)
hostile_values = st.one_of(python_values, arrays)


# ---------------------------------------------------------------------------------------------
# Batches: validate_batch, as the training loop and the predictor call it
# ---------------------------------------------------------------------------------------------

NUM_CLASSES = 10
MODELS = (
    (("audio", "image"), {"audio": (16,), "image": (4, 4, 1)}),
    (("image", "text"), {"image": (4, 4, 3), "text": (5,)}),
    (("audio",), {"audio": (3, 8)}),
)
T, D = 3, 6  # cached features: tokens [B, T, D], token_mask [B, T], pooled [B, D]


@st.composite
def valid_batches(draw):
    modalities, sample_shapes = draw(st.sampled_from(MODELS))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    size = draw(st.integers(1, 4))
    given_ms = [m for m in modalities if draw(st.integers(0, 3))] or [modalities[0]]
    batch = {}
    for m in given_ms:
        if m != "text" and draw(st.booleans()) and draw(st.booleans()):  # cached features
            batch[f"{m}.tokens"] = rng.normal(size=(size, T, D)).astype(np.float32)
            batch[f"{m}.token_mask"] = rng.random((size, T)) < 0.8
            batch[f"{m}.pooled"] = rng.normal(size=(size, D)).astype(np.float32)
        elif m == "text":
            batch[m] = rng.integers(0, 100, (size, *sample_shapes[m]), np.int32)
        else:
            dtype = draw(st.sampled_from((np.float32, np.float32, np.float16, ml_dtypes.bfloat16)))
            batch[m] = rng.random((size, *sample_shapes[m])).astype(dtype)
        if draw(st.booleans()):
            batch[f"{m}_mask"] = rng.random(size) < 0.5
    if draw(st.booleans()) or len(batch) == 1:
        batch["label"] = rng.integers(0, NUM_CLASSES, size).astype(draw(st.sampled_from("iIlL")))
    return modalities, sample_shapes, batch


def _is_float(x: np.ndarray) -> bool:
    return x.dtype.kind == "f" or x.dtype == ml_dtypes.bfloat16  # bfloat16's kind is "V"


def _float_keys(batch):
    """Keys of float arrays (bfloat16 inputs and cached features included)."""
    return [
        k
        for k, v in batch.items()
        if isinstance(v, np.ndarray) and v.size and _is_float(v) and not k.endswith("_mask")
    ]


def _batch_axis_keys(batch, but):
    return [k for k, v in batch.items() if k != but and isinstance(v, np.ndarray) and v.ndim]


def _batch_size(batch):
    """The batch size of a (maybe already mutated) batch: some array's first axis, or 1."""
    sizes = [v.shape[0] for v in batch.values() if isinstance(v, np.ndarray) and v.ndim]
    return next((n for n in sizes if n), 1)


# What a mutation claims: ALWAYS invalid whatever came before, invalid when applied ALONE to a
# valid batch, or nothing (NONE: it may or may not stay valid).
ALWAYS, ALONE, NONE = "always", "alone", ""


@st.composite
def mutations(draw, modalities, sample_shapes, batch):
    """(mutated batch, its claim: ALWAYS, ALONE or NONE, the key it changed or None)."""
    batch = dict(batch)
    keys = sorted(batch)
    if not keys:
        return batch, NONE, None
    op = draw(
        st.sampled_from(
            ("delete", "extra", "replace", "nan", "label", "mask", "shape", "dtype", "size")
        )
    )
    if op == "delete":
        key = draw(st.sampled_from(keys))
        del batch[key]
        return batch, NONE, key
    if op == "extra":
        allowed = {*modalities, *(f"{m}_mask" for m in modalities), "label"}
        allowed |= {f"{m}.{k}" for m in modalities for k in ("tokens", "token_mask", "pooled")}
        key = draw(st.one_of(st.text(max_size=8), st.sampled_from(("video", "audio.x", "lbl"))))
        if key in allowed:
            return batch, NONE, None
        batch[key] = draw(hostile_values)
        return batch, ALWAYS, key
    if op == "replace":
        key = draw(st.sampled_from(keys))
        batch[key] = draw(hostile_values)
        return batch, NONE, key
    if op == "nan":
        candidates = _float_keys(batch)
        if not candidates:
            return batch, NONE, None
        key = draw(st.sampled_from(candidates))
        x = batch[key].copy()
        x.flat[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from((np.nan, np.inf, -np.inf)))
        batch[key] = x
        return batch, ALWAYS, key
    size = _batch_size(batch)
    if op == "label":
        bad = draw(st.sampled_from((-1, -(2**31), NUM_CLASSES, 2**31 - 1, 2.5)))
        label = np.zeros(size, np.float32 if isinstance(bad, float) else np.int64)
        label[draw(st.integers(0, size - 1))] = bad
        batch["label"] = label
        return batch, ALWAYS, "label"
    if op == "mask":
        m = draw(st.sampled_from(modalities))
        bad = draw(st.sampled_from(("int", "float", "short", "long", "2d")))
        batch[f"{m}_mask"] = {
            "int": np.ones(size, np.int32),
            "float": np.ones(size, np.float32),
            "short": np.ones(size - 1, bool),
            "long": np.ones(size + 1, bool),
            "2d": np.ones((size, 1), bool),
        }[bad]
        return batch, ALONE, f"{m}_mask"  # alone: a mask may match a batch size changed before
    raw = [m for m in modalities if isinstance(batch.get(m), np.ndarray) and batch[m].ndim]
    if not raw:
        return batch, NONE, None
    m = draw(st.sampled_from(raw))
    x = batch[m]
    if op == "shape":
        new = (size, *draw(shapes))
        batch[m] = np.zeros(new, x.dtype)
        return batch, ALWAYS if new[1:] != tuple(sample_shapes[m]) else NONE, m
    if op == "dtype":
        dtype = draw(st.sampled_from(DTYPES))
        batch[m] = _array(dtype, x.shape, 0)
        kind = "f" if dtype == "bfloat16" else np.dtype(dtype).kind
        return batch, ALWAYS if kind not in ("iu" if m == "text" else "f") else NONE, m
    new_size = draw(st.sampled_from((0, size - 1, size + 1)))  # "size"
    batch[m] = np.zeros((new_size, *x.shape[1:]), x.dtype)
    if new_size == 0:
        return batch, ALWAYS, m
    return batch, ALONE if _batch_axis_keys(batch, m) else NONE, m


@_settings("batch")
@given(st.data())
def test_hostile_batches(data):
    modalities, sample_shapes, batch = data.draw(valid_batches())
    # One batch in eight stays valid (and must be accepted); the rest take 1-3 mutations.
    steps = 0 if data.draw(st.integers(0, 7)) == 0 else data.draw(st.integers(1, 3))
    # A key whose current value makes the batch invalid whatever else the batch holds (an
    # ALWAYS claim) keeps it invalid until a later mutation deletes or replaces that key.
    invalid_keys: set[str] = set()
    invalid_alone = False
    for _ in range(steps):
        batch, claim, key = data.draw(mutations(modalities, sample_shapes, batch))
        invalid_keys.discard(key)
        if claim == ALWAYS:
            invalid_keys.add(key)
        invalid_alone = claim == ALONE and steps == 1
    surely_invalid = bool(invalid_keys) or invalid_alone
    if data.draw(st.integers(0, 19)) == 0:  # not a dict at all
        batch, steps, surely_invalid = data.draw(hostile_values), 1, True
    as_jax = steps == 0 and data.draw(st.integers(0, 9)) == 0
    if as_jax:  # device arrays are checked statically (shapes and dtypes)
        batch = {k: jnp.asarray(v) for k, v in batch.items()}
    with _time_limit():
        try:
            validate_batch(batch, modalities, num_classes=NUM_CLASSES, sample_shapes=sample_shapes)
        except MmjaxError as err:
            _assert_mmjax_error(err, InputError)
            assert steps, f"a valid batch was rejected: {err}"
            return
    event("accepted")
    assert not surely_invalid, f"an invalid batch was accepted: {batch}"


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize(
    "key, dtype",
    [
        ("image", np.float32),
        ("image", np.float16),
        ("image", ml_dtypes.bfloat16),
        ("audio", ml_dtypes.bfloat16),
        ("image.tokens", np.float32),
        ("image.pooled", np.float32),
        ("audio.tokens", ml_dtypes.bfloat16),
    ],
)
def test_a_nonfinite_value_in_any_float_input_is_rejected(key, dtype, value):
    """Every float a batch can carry, raw or cached, in every float dtype (the generated
    batches reach some of these only by chance)."""
    (modalities, sample_shapes), size = MODELS[0], 2
    rng = np.random.default_rng(0)
    batch = {"label": np.zeros(size, np.int32)}
    for m in modalities:
        if key.startswith(f"{m}."):
            batch[f"{m}.tokens"] = rng.normal(size=(size, T, D)).astype(np.float32)
            batch[f"{m}.token_mask"] = np.ones((size, T), bool)
            batch[f"{m}.pooled"] = rng.normal(size=(size, D)).astype(np.float32)
        else:
            batch[m] = rng.random((size, *sample_shapes[m])).astype(np.float32)
    batch[key] = batch[key].astype(dtype)
    validate_batch(batch, modalities, num_classes=NUM_CLASSES, sample_shapes=sample_shapes)
    batch[key].flat[-1] = value
    with pytest.raises(InputError, match=rf"{re.escape(key)}.*NaN or infinity"):
        validate_batch(batch, modalities, num_classes=NUM_CLASSES, sample_shapes=sample_shapes)


# ---------------------------------------------------------------------------------------------
# Configs: experiment_from on mutated config dicts; --set overrides on a loaded config
# ---------------------------------------------------------------------------------------------

CONFIG_SPECS = (
    "configs/avdigits_late.py:tiny",
    "configs/emoji_clip.py:tiny",
    "configs/avdigits_audio_finetune.py:tiny",
)
BASES = {spec: load_config_file(str(ROOT / spec)) for spec in CONFIG_SPECS}
BASE_DICTS = {spec: json.loads(json.dumps(cfg.to_dict())) for spec, cfg in BASES.items()}


def _paths(node, prefix=()):
    """Every (path, value) of a nested dict: sections and leaves."""
    for key, value in node.items():
        yield (*prefix, key), value
        if isinstance(value, dict):
            yield from _paths(value, (*prefix, key))


config_values = st.one_of(
    python_values,
    st.sampled_from(
        (
            math.nan, math.inf, -math.inf, -0.0, 1e308, -1, 0, 10**30, -(10**400), 2**63,
            "", "small_cnn", "late_concat", "float32", "val", "image", "audio",
            [1, "a", None], [[1]], (), {"name": "nope"}, {"name": ["x"]}, {1: 2},
            {None: 1}, {(1, 2): 3}, {"a": {"b": {}}}, {1, 2}, b"x", 1j,
        )
    ),
)  # fmt: skip


def _float_leaves(cfg):
    return [p for p, v in _paths(cfg) if isinstance(v, float) and "pretrained" not in p]


@st.composite
def config_mutation(draw, cfg):
    """Mutate `cfg` in place; return it (or a replacement) and its claim (as for batches)."""
    paths = [p for p, _ in _paths(cfg)]
    op = draw(st.sampled_from(("delete", "set", "unknown", "nan", "top")))
    if op == "top" or not paths:
        return copy.deepcopy(draw(config_values)), ALWAYS
    if op == "nan":
        leaves = _float_leaves(cfg)
        if not leaves:
            return cfg, NONE
        *parents, leaf = draw(st.sampled_from(leaves))
        node = cfg
        for key in parents:
            node = node[key]
        node[leaf] = draw(st.sampled_from((math.nan, math.inf, -math.inf)))
        return cfg, ALWAYS
    if op == "unknown":
        sections = [()] + [p for p, v in _paths(cfg) if isinstance(v, dict)]
        where = draw(st.sampled_from(sections))
        node = cfg
        for key in where:
            node = node[key]
        key = draw(st.one_of(st.text(max_size=6), st.sampled_from((1, None, (1,), "name"))))
        if key in node or where[-1:] in (("encoders",), ("pretrained",)):
            return cfg, NONE  # a new modality may be valid; "name" replaces the component
        node[key] = copy.deepcopy(draw(config_values))
        return cfg, ALONE  # alone: a deleted component's "name" comes back this way
    *parents, leaf = draw(st.sampled_from(paths))
    node = cfg
    for key in parents:
        node = node[key]
    if op == "delete":
        del node[leaf]
    else:
        node[leaf] = copy.deepcopy(draw(config_values))
    return cfg, NONE


@_settings("config")
@given(st.data())
def test_hostile_config_dicts(data):
    spec = data.draw(st.sampled_from(CONFIG_SPECS))
    cfg = copy.deepcopy(BASE_DICTS[spec])
    steps = data.draw(st.integers(0, 3))
    surely_invalid = False
    for _ in range(steps):
        if not isinstance(cfg, dict):
            break
        cfg, claim = data.draw(config_mutation(cfg))
        surely_invalid = claim == ALWAYS or (claim == ALONE and steps == 1)
    with _time_limit():
        try:
            exp = experiment_from(cfg)
        except MmjaxError as err:
            _assert_mmjax_error(err, ConfigError)
            assert steps, f"the valid config {spec} was rejected: {err}"
            return
    event("accepted")
    assert isinstance(exp, ExperimentConfig)
    assert not surely_invalid, f"an invalid config was accepted: {cfg}"
    if not steps:
        assert exp == experiment_from(BASES[spec])


def _keys(node, prefix=""):
    for key, value in node.items():
        yield prefix + key
        if isinstance(value, dict):
            yield from _keys(value, prefix + key + ".")


ALL_KEYS = sorted({k for cfg in BASE_DICTS.values() for k in _keys(cfg)})
literal_texts = st.one_of(
    st.text(max_size=12),
    st.builds(repr, config_values),
    st.sampled_from(
        (
            "nan", "inf", "-inf", "1e999", "-1", "0", "0.5", "2", "64", "True", "none", "None",
            "0x10", "(1,", "'a'", "[1, 2]", "['a', 'b']", "a, b", ",", "{}", "{[1]: 2}",
            "{'name': 'x'}", "9" * 5000, "1" * 400, "-" * 100_000 + "1", "1" + "+1" * 50_000,
            "(" * 300 + ")" * 300,
            "[" * 99 + "]" * 99, "lambda: 0", "__import__('os')", "\x00", "\udcff",
        )
    ),
)  # fmt: skip
set_strings = st.one_of(
    st.builds(
        lambda key, sep, value: f"{key}{sep}{value}",
        st.one_of(st.sampled_from(ALL_KEYS), st.sampled_from(ALL_KEYS), st.text(max_size=10)),
        st.sampled_from(("=",) * 6 + ("==", "", " = ", ":")),
        literal_texts,
    ),
    st.sampled_from(("", "=", "=1", "a")),
)


@_settings("override")
@given(st.data())
def test_hostile_overrides(data):
    spec = data.draw(st.sampled_from(CONFIG_SPECS))
    cfg = copy.deepcopy(BASES[spec])
    # the CLI's --set strings, or the Python API's set_value(cfg, key, value) (create_model)
    as_api = data.draw(st.booleans())
    if as_api:
        key = data.draw(st.one_of(st.sampled_from(ALL_KEYS), st.text(max_size=10)))
        value = copy.deepcopy(data.draw(config_values))
    else:
        items = data.draw(st.lists(set_strings, min_size=1, max_size=3))
    with _time_limit():
        try:
            if as_api:
                set_value(cfg, key, value)
            else:
                apply_overrides(cfg, items)
            exp = experiment_from(cfg)
        except MmjaxError as err:
            _assert_mmjax_error(err, ConfigError)
            return
    event("accepted")
    assert isinstance(exp, ExperimentConfig)


# ---------------------------------------------------------------------------------------------
# Dataset records: the bytes an ArrayRecord shard holds, through the training pipeline's Decode
# ---------------------------------------------------------------------------------------------

RECORD_SHAPES = (("audio", (16,)), ("image", (4, 4, 1)))
DECODE = Decode(("audio", "image"), shapes=RECORD_SHAPES, num_classes=NUM_CLASSES)
DECODE_CACHED = Decode(("audio", "image"))  # audio as cached features, no shape checks


def _valid_record(rng, cached: bool) -> dict[str, np.ndarray]:
    record = {
        "image": rng.integers(0, 256, (4, 4, 1)).astype(np.uint8),
        "label": np.array(rng.integers(0, NUM_CLASSES), np.int64),
        "voice": np.array("espeak:en"),
    }
    if cached:
        record["audio.tokens"] = rng.normal(size=(T, D)).astype(np.float32)
        record["audio.token_mask"] = rng.random(T) < 0.8
        record["audio.pooled"] = rng.normal(size=D).astype(np.float32)
    else:
        record["audio"] = rng.integers(-(2**15), 2**15, 16).astype(np.int16)
    return record


def _savez(record: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **record)  # object arrays allowed: they are pickled inside the archive
    return buffer.getvalue()


NPY_DESCRS = ("<i8", "<f4", "|u1", "|b1", "<U3", "|V0", "|O", "<c8", "zz", "", "[('a', '|O')]")


@st.composite
def npy_members(draw):
    """A zip member that looks like an .npy array: a (maybe lying) header and some bytes."""
    header = {
        "descr": draw(st.sampled_from(NPY_DESCRS)),
        "fortran_order": draw(st.sampled_from((False, True, "no"))),
        "shape": draw(
            st.lists(st.sampled_from((0, 1, 3, -1, 10**13, 2**62)), max_size=3).map(tuple)
        ),
    }
    text = draw(st.sampled_from((repr(header), repr(header)[:-3], "{}", "[]", "(((")))
    text = text.ljust(117) + "\n"
    head = b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1")
    return head + draw(st.binary(max_size=40))


@st.composite
def crafted_zips(draw):
    buffer = io.BytesIO()
    methods = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
    with (
        warnings.catch_warnings(action="ignore"),  # duplicate member names: hostile, on purpose
        zipfile.ZipFile(buffer, "w", draw(st.sampled_from(methods))) as archive,
    ):
        for _ in range(draw(st.integers(0, 3))):
            name = draw(st.sampled_from(("audio.npy", "image.npy", "label.npy", "x", "a.txt")))
            body = draw(st.one_of(npy_members(), st.binary(max_size=30)))
            archive.writestr(name, body)
    data = buffer.getvalue()
    if draw(st.booleans()) and data:  # flip one byte
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
    return data


@st.composite
def record_mutation(draw, record):
    record = dict(record)
    op = draw(st.sampled_from(("delete", "add", "dtype", "shape", "replace", "nan", "label")))
    key = draw(st.sampled_from(sorted(record)))
    if op == "delete":
        del record[key]
    elif op == "add":
        record[draw(st.text(min_size=1, max_size=6))] = draw(arrays)
    elif op == "dtype":
        record[key] = _array(draw(st.sampled_from(DTYPES)), record[key].shape, 1)
    elif op == "shape":
        record[key] = np.zeros(draw(shapes), record[key].dtype)
    elif op == "replace":
        record[key] = draw(arrays)
    elif op == "nan":
        record[key] = np.full(record[key].shape or (1,), np.nan, np.float32)
    else:
        record["label"] = np.array(draw(st.sampled_from((-1, 10, 2**40, 2**63))))
    return record


def _check_decoded(out: dict, decode: Decode) -> None:
    """What Decode promises for a record it accepts."""
    assert set(out) >= {"audio_mask", "image_mask", "label"}
    assert out["label"].dtype == np.int32 and out["label"].shape == ()
    high = NUM_CLASSES if decode.num_classes else 2**31
    assert 0 <= out["label"] < high
    for m, shape in RECORD_SHAPES:
        if m in out:
            x = out[m]
            assert x.dtype in (np.float32, np.int32), x.dtype
            assert not decode.shapes or x.shape == shape
            assert x.dtype != np.float32 or np.isfinite(x).all()
        else:
            assert out[f"{m}.tokens"].dtype.kind == "f"
            assert np.isfinite(out[f"{m}.pooled"]).all()


@_settings("record")
@given(st.data())
def test_hostile_records(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    cached = data.draw(st.booleans())
    decode = DECODE_CACHED if cached else DECODE
    source = data.draw(st.sampled_from(("record", "record", "bytes", "truncated", "zip")))
    steps = 0
    if source == "bytes":
        element, steps = data.draw(st.binary(max_size=300)), 1
    elif source == "zip":
        element, steps = data.draw(crafted_zips()), 1
    else:
        record = _valid_record(rng, cached)
        steps = data.draw(st.integers(0, 2))
        for _ in range(steps):
            record = data.draw(record_mutation(record))
        element = _savez(record)
        if source == "truncated":
            element, steps = element[: data.draw(st.integers(0, len(element) - 1))], 1
    with _time_limit():
        try:
            out = decode.map(element)
        except MmjaxError as err:
            _assert_mmjax_error(err, DataError)
            assert steps, f"a valid record was rejected: {err}"
            assert source != "truncated" or "corrupt record" in str(err)
            return
    event("accepted")
    assert source != "truncated", "a truncated record was decoded"
    _check_decoded(out, decode)


_EXPLOITED: list[str] = []


def _exploited(flag: str) -> str:
    _EXPLOITED.append(flag)
    return flag


class _Exploit:
    """Unpickling this calls _exploited: proof that decoding ran attacker code."""

    def __reduce__(self):
        return (_exploited, ("pwned",))


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps(_Exploit()),
        pickle.dumps({"audio": _Exploit(), "label": 1}),
        _savez({"audio": np.array([_Exploit()], object), "label": np.array(1)}),
        _savez({"image": np.zeros((4, 4, 1), np.uint8), "label": np.array([_Exploit()])}),
    ],
    ids=["pickle", "pickled-dict", "npz-object-field", "npz-object-label"],
)
def test_records_never_unpickle(payload):
    _EXPLOITED.clear()
    with pytest.raises(DataError, match="corrupt record"):
        DECODE.map(payload)
    with pytest.raises(DataError, match="corrupt record"):
        decode_record(payload)
    assert not _EXPLOITED, "decoding a record unpickled attacker bytes"
    # the payload is live: unpickling it (what np.load(allow_pickle=True) would do) runs it
    if payload.startswith(b"PK"):
        with np.load(io.BytesIO(payload), allow_pickle=True) as archive:
            [archive[key] for key in archive.files]
    else:
        pickle.loads(payload)
    assert _EXPLOITED, "the exploit payload is inert; this test would prove nothing"
    _EXPLOITED.clear()


def test_valid_records_decode():
    rng = np.random.default_rng(0)
    record = _valid_record(rng, cached=False)
    out = DECODE.map(encode_record(record))
    _check_decoded(out, DECODE)
    np.testing.assert_allclose(out["image"], record["image"] / 255.0, rtol=1e-6)
    assert out["label"] == record["label"]
    _check_decoded(DECODE_CACHED.map(encode_record(_valid_record(rng, cached=True))), DECODE_CACHED)


# ---------------------------------------------------------------------------------------------
# The command line: mmjax.cli.main(argv) in-process
# ---------------------------------------------------------------------------------------------

REAL_CONFIG = str(ROOT / "configs/avdigits_late.py")
NOT_A_KEY = "zz_hostile_not_a_key=1"  # makes sure a real config never reaches training
FORBIDDEN = {*mmjax.DATASETS.names()}  # `data prepare NAME` would build a dataset

CONFIG_BODIES = (
    "def get_config(arg=None):\n    raise {exc}('hostile')\n",
    "def get_config(arg=None):\n    return {value}\n",
    "def get_config():\n    return None\n",
    "def get_config(arg=None):\n    return get_config(arg)\n",
    "get_config = {value}\n",
    "import zz_no_such_module_zz\n",
    "raise {exc}('at import')\n",
    "x = (\n",
    "import ml_collections\n\ndef get_config(arg=None):\n"
    "    return ml_collections.ConfigDict({cfg})\n",
)
CONFIG_RETURNS = ("None", "5", "{}", "[1]", "'configs'", "{'model': {}}", "1 / 0")
CONFIGDICTS = (
    "{'model': 1}",
    "{'zz': 1}",
    "{'model': {'encoders': {'image': {'name': 'nope'}}}}",
    "{'optim': {'learning_rate': float('nan')}}",
    "{'train': {'seed': -1}, 'model': {'encoders': {}}}",
)
EXCEPTIONS = ("ValueError", "KeyError", "TypeError", "ZeroDivisionError", "OSError", "Exception")


# experiment.json of garbage workdirs
WORKDIRS = {
    "bytes": b"\xff\xfe\x00garbage",
    "list": b"[]",
    "object": b"{}",
    "config5": json.dumps({"config": 5, "dataset": {}}).encode(),
    "model-list": json.dumps({"config": {"model": []}, "dataset": {}}).encode(),
    "no-dataset": json.dumps({"config": BASE_DICTS[CONFIG_SPECS[0]]}).encode(),
    "nan": b'{"config": NaN}',
}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A scratch directory: garbage workdirs and config files, and the CLI's cwd."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "empty").mkdir()
    (root / "file").write_text("not a directory")
    for name, text in WORKDIRS.items():
        (root / f"wd-{name}").mkdir()
        (root / f"wd-{name}" / "experiment.json").write_bytes(text)
    return root


@st.composite
def config_files(draw, root: Path):
    """A path to a garbage config file (written on the fly), maybe with a `:arg`."""
    body = draw(st.sampled_from(CONFIG_BODIES)).format(
        exc=draw(st.sampled_from(EXCEPTIONS)),
        value=draw(st.sampled_from(CONFIG_RETURNS)),
        cfg=draw(st.sampled_from(CONFIGDICTS)),
    )
    kind = draw(st.sampled_from(("template",) * 6 + ("text", "bytes")))
    content = {
        "template": lambda: body.encode(),
        "text": lambda: draw(st.text(max_size=40)).encode(),
        "bytes": lambda: draw(st.binary(max_size=20)),
    }[kind]()
    suffix = draw(st.sampled_from((".py",) * 6 + (".txt", "")))
    path = root / f"cfg_{hashlib.sha256(content).hexdigest()[:16]}{suffix}"
    path.write_bytes(content)
    return str(path) + draw(st.sampled_from(("", "", ":tiny", ":", ":x:y")))


def _workdirs(root: Path) -> list[str]:
    """Workdirs that are not: missing, empty, a file, or with a garbage experiment.json."""
    names = ("missing", "missing/deeper", "empty", "file", *(f"wd-{n}" for n in WORKDIRS))
    return [str(root / name) for name in names]


def _values(root: Path):
    fixed = [
        *_workdirs(root),
        # "x" * 200: a long name, but not over NAME_MAX (see KNOWN_LEAKS)
        *("", "-", "--", "0", "-1", "1e3", "x" * 200, "a\x00b", "\udcff", "~", "/", "."),
    ]
    return st.one_of(st.sampled_from(fixed), st.text(max_size=8)).filter(
        lambda v: v not in FORBIDDEN
    )


COMMANDS = {
    "train": ("--config", "--workdir", "--set", "--data-dir", "--stop-after", "--quiet"),
    "sweep": ("--config", "--workdir", "--seeds", "--set-each", "--shared-order", "--set"),
    "eval": ("--workdir", "--split", "--data-dir", "--without", "--json"),
    "predict": ("--workdir", "--image", "--audio", "--json"),
    "robustness": ("--workdir", "--model", "--split", "--out", "--levels", "--corruptions"),
    "fewshot": ("--workdir", "--model", "--shots", "--draws", "--l2", "--split", "--out"),
    "data prepare": ("--data-dir", "--small"),
    "features extract": ("--config", "--out", "--split", "--set", "--data-dir"),
    "bench": ("--smoke", "--out"),
    "zoo list": ("--json", "--markdown"),
    "data": (),
    "features": (),
    "zoo": (),
    "nope": (),
    "": (),
}
SWITCHES = ("--quiet", "--json", "--small", "--smoke", "--markdown", "--shared-order", "--")
STRAY_FLAGS = ("--nope", "-x", "--", "-", "--config", "--set", "-h")


@st.composite
def flag_values(draw, flag: str, root: Path) -> list[str]:
    """[flag, value] with a hostile value that suits the flag (or [flag] for a switch)."""
    if flag in SWITCHES:
        return [flag]
    if flag == "--config":
        which = draw(st.sampled_from(("file",) * 4 + ("real", "other")))
        value = {
            "file": config_files(root),
            "real": st.sampled_from((REAL_CONFIG + ":tiny", REAL_CONFIG + ":bogus")),
            "other": st.one_of(_values(root), st.just("x" * 300)),  # over NAME_MAX
        }[which]
    elif flag == "--workdir" and draw(st.integers(0, 3)):
        value = st.sampled_from(_workdirs(root))
    elif flag in ("--set", "--set-each"):
        value = set_strings
    elif flag == "--stop-after":
        value = st.one_of(st.integers(-(2**70), 2**70).map(str), _values(root))
    elif flag in ("--without", "--split"):
        value = st.one_of(st.sampled_from(("image", "audio", "test", "val", "")), _values(root))
    else:
        value = _values(root)
    return [flag, draw(value)]


@st.composite
def well_formed(draw, command: str, root: Path) -> list[str]:
    """A command line argparse accepts (required flags present), with hostile values."""
    required = {
        "train": ["--config", "--workdir"],
        "sweep": ["--config", "--workdir"],
        "eval": ["--workdir"],
        "predict": ["--workdir"],
        "robustness": ["--workdir"],
        "fewshot": ["--workdir", "--shots"],
        "features extract": ["--config", "--out"],
    }.get(command, [])
    optional = [f for f in COMMANDS[command] if f not in required or f in ("--set", "--split")]
    chosen = required + draw(st.lists(st.sampled_from(optional), max_size=4))
    pairs = [draw(flag_values(flag, root)) for flag in draw(st.permutations(chosen))]
    argv = command.split()
    if command == "data prepare":
        argv.append(draw(_values(root).filter(lambda v: not v.startswith("-"))))
    if command == "bench":
        argv.append("zz_no_such_suite")  # first, so no flag can take it: bench never runs
    return argv + [token for pair in pairs for token in pair]


@st.composite
def malformed(draw, command: str, root: Path) -> list[str]:
    """Flags and values in any order, stray flags, missing values and required flags."""
    argv = command.split()
    if command == "data prepare" and draw(st.integers(0, 4)):
        argv.append(draw(_values(root)))  # never a registered dataset's name
    if command == "bench":
        argv.append("zz_no_such_suite")
    flags = COMMANDS[command] + STRAY_FLAGS
    for _ in range(draw(st.integers(0, 6))):
        flag = draw(st.sampled_from(flags))
        if flag in SWITCHES or (flag.startswith("-") and not flag.startswith("--")):
            argv.append(flag)
        elif draw(st.integers(0, 4)):
            argv += draw(flag_values(flag, root))
        else:
            argv.append(flag)  # its value is missing
    if draw(st.integers(0, 5)) == 0:
        argv.insert(draw(st.integers(0, len(argv))), draw(_values(root)))
    return argv


@st.composite
def argvs(draw, root: Path):
    real = ("train", "sweep", "eval", "predict", "robustness", "fewshot", "data prepare")
    real += ("features extract", "bench")
    command = draw(st.sampled_from(sorted(COMMANDS) + 2 * list(real) + ["train"] * 3))
    if command in real and draw(st.integers(0, 3)):
        argv = draw(well_formed(command, root))
    else:
        argv = draw(malformed(command, root))
    trains = (["train"], ["sweep"], ["features"])
    if command.split()[:1] in trains and any(REAL_CONFIG in a for a in argv):
        argv += ["--set", NOT_A_KEY]  # a real config never trains or extracts
    return argv


def _must_fail(real):
    """Wrap a validation step that hostile input must not pass (else real work would start)."""

    def guarded(*args, **kwargs):
        real(*args, **kwargs)
        raise AssertionError(f"hostile CLI input passed {real.__name__}: real work would start")

    return guarded


@contextlib.contextmanager
def _no_real_work():
    """Safety net: a generated command line never trains, extracts, predicts, benchmarks or
    prepares a dataset; if one passes validation the test fails instead."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks import harness

    def refuse(*args, **kwargs):
        raise AssertionError("a generated command line reached real work")

    datasets = {
        name: dataclasses.replace(mmjax.DATASETS.get(name), prepare=refuse)
        for name in mmjax.DATASETS.names()
    }
    with contextlib.ExitStack() as stack:
        for module in (loop, sweep, features, predict):
            stack.enter_context(
                mock.patch.object(module, "experiment_from", _must_fail(module.experiment_from))
            )
        stack.enter_context(mock.patch.object(harness, "run", refuse))
        stack.enter_context(mock.patch.dict(mmjax.DATASETS._items, datasets))
        yield


def _run_cli(argv: list[str], cwd: Path) -> tuple[str, int | str | None, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(cwd):
        try:
            rc = cli.main(argv)
        except SystemExit as exit_:
            return "exit", exit_.code, out.getvalue(), err.getvalue()
    return "return", rc, out.getvalue(), err.getvalue()


def _check_cli_outcome(argv, how, code, out, err):
    if how == "exit":  # argparse
        if code == 0:
            assert {"-h", "--help"} & set(argv), f"{argv}: argparse exited 0"
            assert "usage:" in out
        else:
            assert code == 2, f"{argv}: SystemExit({code!r}); stderr: {err}"
            assert "usage:" in err and "error:" in err, f"{argv}: no usage message: {err!r}"
        return
    if code == 0:
        assert argv[:2] == ["zoo", "list"], f"{argv} succeeded: {out!r}"
        return
    assert code == 2, f"{argv}: main returned {code!r}"
    assert err.startswith("mmjax: error: "), f"{argv}: stderr {err!r}"
    assert err.removeprefix("mmjax: error: ").strip(), f"{argv}: an error without a message"


@_settings("cli")
@given(data=st.data())
def test_hostile_command_lines(scratch, data):
    argv = data.draw(argvs(scratch))
    with _no_real_work(), _time_limit():
        how, code, out, err = _run_cli(argv, scratch)
    _check_cli_outcome(argv, how, code, out, err)


@pytest.mark.parametrize(
    "body, expected",
    [
        ("x = (\n", "SyntaxError"),
        ("import zz_no_such_module_zz\n", "ModuleNotFoundError"),
        ("def get_config(arg=None):\n    raise RuntimeError('boom')\n", "RuntimeError: boom"),
        ("def get_config():\n    return None\n", "TypeError"),
        ("def get_config(arg=None):\n    return [1]\n", "got list"),
        ("get_config = 5\n", "TypeError"),
        ("x = 1\n", "no get_config"),
    ],
)
def test_config_file_errors_name_the_file(tmp_path, body, expected):
    path = tmp_path / "broken.py"
    path.write_text(body)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config_file(str(path))
    assert str(path) in str(info.value)
    text = tmp_path / "config.txt"
    text.write_text("def get_config(arg=None):\n    return None\n")
    with pytest.raises(ConfigError, match="not a Python file"):
        load_config_file(str(text))


# Command lines that once ended in a raw traceback (the exception each raised is noted).
BYTES_CONFIG = (
    "import ml_collections\n\ndef get_config(arg=None):\n"
    "    return ml_collections.ConfigDict({'data': {'root': b'x'}})\n"
)
NO_DATA = {k: v for k, v in BASE_DICTS[CONFIG_SPECS[0]].items() if k != "data"}
BAD_CHANNELS = copy.deepcopy(BASE_DICTS[CONFIG_SPECS[0]])
BAD_CHANNELS["model"]["encoders"]["image"]["channels"] = [-3]
LEAK_WORKDIRS = {
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "no-data": json.dumps({"config": NO_DATA, "dataset": {"modalities": {}}}).encode(),
    "bad-channels": json.dumps({"config": BAD_CHANNELS, "dataset": {"modalities": {}}}).encode(),
}
FIXED_LEAKS = {
    # OSError (ENAMETOOLONG) from Path.is_file in train/workdir.py read_experiment
    "eval-long-workdir": (["eval", "--workdir", "x" * 300], OSError),
    "predict-long-workdir": (["predict", "--workdir", "x" * 300], OSError),
    # RecursionError from json.loads in read_experiment (it catches ValueError, not this)
    "eval-deep-json": (["eval", "--workdir", "{root}/leak-deep"], RecursionError),
    # KeyError: evaluate_workdir sets config["data"]["root"] on a config without "data"
    "eval-data-dir-no-data": (
        ["eval", "--workdir", "{root}/leak-no-data", "--data-dir", "{root}"],
        KeyError,
    ),
    # TypeError: a negative conv width reaches the model constructor unchecked
    "eval-negative-channels": (["eval", "--workdir", "{root}/leak-bad-channels"], TypeError),
    # TypeError: train's and extract's json round trip runs before experiment_from
    "train-bytes-config": (
        ["train", "--config", "{root}/bytes.py", "--workdir", "{root}/w"],
        TypeError,
    ),
    "extract-bytes-config": (
        ["features", "extract", "--config", "{root}/bytes.py", "--out", "{root}/o"],
        TypeError,
    ),
}


@pytest.mark.parametrize("name", sorted(FIXED_LEAKS))
def test_former_cli_leaks_end_in_mmjax_errors(tmp_path, name):
    argv, _ = FIXED_LEAKS[name]
    for workdir, text in LEAK_WORKDIRS.items():
        (tmp_path / f"leak-{workdir}").mkdir()
        (tmp_path / f"leak-{workdir}" / "experiment.json").write_bytes(text)
    (tmp_path / "bytes.py").write_text(BYTES_CONFIG)
    argv = [a.replace("{root}", str(tmp_path)) for a in argv]
    how, code, out, err = _run_cli(argv, tmp_path)
    assert how == "return", (argv, err)
    _check_cli_outcome(argv, how, code, out, err)
