"""Comparing pytrees of arrays (train states, parameters) in tests."""

import jax
import numpy as np


def assert_same_leaves(a, b) -> None:
    """Every leaf of `a` equals `b`'s, bit for bit, in the same order; random keys compare
    by their key data."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
