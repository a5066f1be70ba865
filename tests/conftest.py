"""Test setup: 4 fake CPU devices, forced before anything imports jax."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
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


@pytest.fixture(scope="session")
def avdigits_root(tmp_path_factory: pytest.TempPathFactory):
    """A small AV-Digits build (real digits, real TTS and human speech), shared by the session."""
    root = tmp_path_factory.mktemp("data")
    prepare_avdigits(root, small=True, progress=False)
    return root


@pytest.fixture(scope="session")
def full_root(tmp_path_factory: pytest.TempPathFactory):
    """The full AV-Digits build (3,900 records; about 15-30 s on 2 cores)."""
    root = tmp_path_factory.mktemp("avdigits_full")
    prepare_avdigits(root, progress=False)
    return root


@pytest.fixture(scope="session")
def emoji_root(tmp_path_factory: pytest.TempPathFactory):
    """A small emoji image <-> caption build (real font, real Unicode names; a few seconds)."""
    from mmjax.data.builders.emoji import prepare_emoji

    root = tmp_path_factory.mktemp("emoji")
    prepare_emoji(root, small=True, progress=False)
    return root
