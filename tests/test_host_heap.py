"""Importing mmjax keeps freed host memory in the process (mmjax/host_heap.py): a jitted
program's 64 MB temporary no longer costs fresh pages from the OS on every run."""

import os
import subprocess
import sys

import pytest

from mmjax import host_heap

# Page faults in each of 12 runs of a program whose first product [1024, 16384] (64 MB) is a
# temporary, after 3 runs to warm up.
_FAULTS = """
import resource, sys
if sys.argv[1] == "import": import mmjax
import jax, jax.numpy as jnp
f = jax.jit(lambda x, w: (x @ w).T @ x)
x, w = jnp.ones((1024, 64)), jnp.ones((64, 16384))
for run in range(15):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x, w).block_until_ready()
    if run >= 3: print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
    reason="these are glibc's malloc settings",
)


def _faults_per_run(how: str, **env: str) -> list[int]:
    env = {k: v for k, v in os.environ.items() if k not in host_heap._SETTINGS} | env
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS, how], env=env, check=True, capture_output=True, text=True
    )
    return [int(faults) for faults in out.stdout.split()]


@glibc_only
def test_importing_mmjax_keeps_a_programs_temporaries_resident():
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert min(_faults_per_run("plain")) > 0.9 * pages  # glibc alone: fresh pages every run
    # mmjax: none once the heap has grown, which takes a few runs (more on a busy machine)
    resident = [faults < pages / 8 for faults in _faults_per_run("import")]
    assert sum(resident) >= len(resident) / 3


@glibc_only
def test_a_users_own_malloc_settings_stand(monkeypatch):
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert min(_faults_per_run("import", MALLOC_ARENA_MAX="2")) > 0.9 * pages
    monkeypatch.setenv("MALLOC_TOP_PAD_", "0")
    assert host_heap.retain_freed_memory() is False
