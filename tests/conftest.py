"""Test setup: 4 fake CPU devices, forced before anything imports jax."""

import atexit
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

# XLA:CPU's LLVM backend at optimisation level 1 instead of its default 3. Compiling is most of
# a tiny test's time, and level 1 cut the suite from 1,161 to 935 s with the train steps as fast
# (avdigits_late: 26.9 against 26.8 ms) and the init program bit-identical; trained values differ
# by float32 rounding (2.4e-7 at most after 12 steps). XLA's HLO passes (fusion, sharding) do not
# depend on this level. Level 0 runs slower (86.7 ms) and changes even the init values. Child
# processes get the same flags (tests/launch.py); flags set by the caller come after, and win.
# Where jaxlib still has it (0.10; 0.11.2 and 0.12.1 have no such flag, so the Python 3.12
# pass runs without it), XLA:CPU's older fusion emitter instead of its MLIR fusion emitters
# (the default): the bench smoke's ten programs compiled in 11.7 against 23.2 s,
# EfficientNet-Lite0's gradient in 8.9 against 13.0 s, and the suite's test time fell from
# 2,085 to 1,552 s (one run each).
# Mmjax itself keeps XLA's default, whose steps are as fast or faster (CNN-LSTM train step:
# 47-52 ms with the default, 49-62 ms with the older emitter; benchmarks/NOTES.md).
os.environ["XLA_FLAGS"] = " ".join(
    (
        "--xla_backend_optimization_level=1",
        "--xla_cpu_use_fusion_emitters=false"
        if tuple(int(n) for n in version("jaxlib").split(".")[:2]) < (0, 11)
        else "",
        os.environ.get("XLA_FLAGS", ""),
        "--xla_force_host_platform_device_count=4",
    )
)
os.environ["JAX_PLATFORMS"] = "cpu"
# One compilation cache for the session and the `mmjax` child processes it starts: programs
# that recur (the tiny configs are trained by many tests) compile once. Results are the same.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # pytest-xdist workers inherit it
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmjax-test-jit-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

import jax
import pytest

from mmjax.data.builders.avdigits import prepare_avdigits

assert jax.device_count() == 4, f"tests need 4 fake CPU devices, got {jax.devices()}"


# The test files that take longest, longest first (file totals of `--durations=0`). `make test`
# runs one file per worker at a time (--dist loadfile), and xdist's default queue puts files
# with more tests first, which left the one-test end-to-end file to start last, alone, while
# the other worker had nothing left. Long files first end both workers at about the same time.
# Files not named here follow in xdist's order.
LONGEST_FIRST = (
    "test_components",
    "test_fusion_training",
    "test_product_clips",
    "test_end_to_end",
    "test_faults",
    "test_bench",
    "test_published",
    "test_multiprocess",
    "test_import",
    "test_text_audio_video",
    "test_auxiliary_losses",
    "test_pretrained_models",
    "test_features",
    "test_fusion_reference",
    "test_train_loop",
)


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the order set below
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    by_size = {}  # xdist's own order for the rest: files with more tests first
    for item in items:
        by_size[item.path] = by_size.get(item.path, 0) + 1
    items.sort(key=lambda item: (rank.get(item.path.stem, len(rank)), -by_size[item.path]))


def _build_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]):
    """A folder made by `build(folder)`, once per test run: under pytest-xdist the first worker
    that asks builds it in the run's shared temporary folder (holding a lock meanwhile) and the
    other workers reuse it. Builds are deterministic and no test writes into them."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        root = factory.mktemp(name)
        build(root)
        return root
    shared = factory.getbasetemp().parent  # every worker's basetemp is a folder in it
    root, done = shared / f"shared-{name}", shared / f"shared-{name}.done"
    with open(shared / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)  # a build a failed worker left half done
            root.mkdir()
            build(root)
            done.touch()
    return root


@pytest.fixture(scope="session")
def avdigits_root(tmp_path_factory: pytest.TempPathFactory):
    """A small AV-Digits build (real digits, real TTS and human speech), shared by the session."""
    return _build_once(
        tmp_path_factory, "data", lambda root: prepare_avdigits(root, small=True, progress=False)
    )


@pytest.fixture(scope="session")
def full_root(tmp_path_factory: pytest.TempPathFactory):
    """The full AV-Digits build (3,900 records; about 15-30 s on 2 cores)."""
    return _build_once(
        tmp_path_factory, "avdigits_full", lambda root: prepare_avdigits(root, progress=False)
    )


@pytest.fixture(scope="session")
def emoji_root(tmp_path_factory: pytest.TempPathFactory):
    """A small emoji image <-> caption build (real font, real Unicode names; a few seconds)."""
    from mmjax.data.builders.emoji import prepare_emoji

    return _build_once(
        tmp_path_factory, "emoji", lambda root: prepare_emoji(root, small=True, progress=False)
    )
