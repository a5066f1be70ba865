"""The layers' backend switch: their CPU-only fast paths, or the GPU/TPU code on any backend.

`models/layers.py` picks cheaper formulations on XLA:CPU (`same_conv`, `max_pool`). Inside
`accelerator_paths()` the GPU/TPU branches run on CPU as well, so they can be checked on a
machine without an accelerator (tests/test_fast_conv.py compares the two).
"""

from contextlib import AbstractContextManager

import jax

# Part of jax.jit's cache key: a program traced outside the context is not reused inside it.
_accelerator_paths = jax.make_user_context(default_value=False)


def accelerator_paths(enabled: bool = True) -> AbstractContextManager[None]:
    """A context in which the layers take their GPU/TPU branches on every backend (`enabled`
    False: the default choice by backend). Programs traced inside it are cached apart."""
    return _accelerator_paths(enabled)


def cpu_fast_paths() -> bool:
    """Whether the layers take their CPU-only fast paths: on the CPU backend, outside
    `accelerator_paths()`. Called while tracing."""
    return jax.default_backend() == "cpu" and not _accelerator_paths.value
