"""layers.same_conv: the CPU fast paths (depthwise as shifted slices, tiny maps as patches
times a matrix) equal `nnx.Conv` itself, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax.models.layers import max_pool, same_conv


def _conv(c_in: int, c_out: int, kernel: int, stride: int, groups: int = 1) -> nnx.Conv:
    return nnx.Conv(
        c_in,
        c_out,
        (kernel, kernel),
        (stride, stride),
        padding="SAME",
        feature_group_count=groups,
        use_bias=False,
        rngs=nnx.Rngs(0),
    )


def _check(conv: nnx.Conv, x: jax.Array) -> None:
    np.testing.assert_allclose(same_conv(conv, x), conv(x), rtol=1e-5, atol=1e-5)
    weights = jax.random.normal(jax.random.key(2), conv(x).shape)
    graphdef, state = nnx.split(conv)

    def loss(state, x, fast):
        module = nnx.merge(graphdef, state)
        return jnp.sum((same_conv(module, x) if fast else module(x)) * weights)

    fast = jax.grad(loss, argnums=(0, 1))(state, x, True)
    plain = jax.grad(loss, argnums=(0, 1))(state, x, False)
    for got, want in zip(jax.tree.leaves(fast), jax.tree.leaves(plain)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("kernel", "stride", "size"), [(3, 2, 8), (5, 1, 7)])
def test_depthwise_equals_grouped_conv(kernel, stride, size):
    x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 6))
    _check(_conv(6, 6, kernel, stride, groups=6), x)


@pytest.mark.parametrize(("kernel", "stride", "size"), [(3, 1, 2), (3, 2, 1), (7, 2, 4)])
def test_tiny_map_equals_direct_conv(kernel, stride, size):
    x = jax.random.normal(jax.random.key(1), (2, size, size, 5))
    _check(_conv(5, 4, kernel, stride), x)


@pytest.mark.parametrize(
    ("window", "stride", "padding", "shape"),
    [(2, 2, "VALID", (2, 9, 6, 3)), (3, 2, "SAME", (2, 7, 8, 3))],
)
def test_max_pool_equals_nnx_max_pool(window, stride, padding, shape):
    x = jax.random.normal(jax.random.key(3), shape)  # no ties: the gradients agree exactly
    want = nnx.max_pool(x, (window, window), (stride, stride), padding=padding)
    np.testing.assert_array_equal(max_pool(x, window, stride, padding=padding), want)
    weights = jax.random.normal(jax.random.key(4), want.shape)
    grads = [
        jax.grad(lambda x, pool=pool: jnp.sum(pool(x) * weights))(x)
        for pool in (
            lambda x: max_pool(x, window, stride, padding=padding),
            lambda x: nnx.max_pool(x, (window, window), (stride, stride), padding=padding),
        )
    ]
    np.testing.assert_array_equal(*grads)
