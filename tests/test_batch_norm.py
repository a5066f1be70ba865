"""models.batch_norm: the CPU train-mode BatchNorm with its written-out gradient equals
`nnx.BatchNorm` (run inside `backend.accelerator_paths()`) in outputs, running statistics and
gradients; its gradient equals JAX's own also for cotangents of the batch statistics. The same
for BatchNorm followed by max pooling, computed by pooling first (`batch_norm_max_pool`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax.models.backend import accelerator_paths
from mmjax.models.batch_norm import (
    _normalise,
    _normalise_forward,
    _normalise_max_pool,
    _normalise_max_pool_forward,
    batch_norm,
    batch_norm_max_pool,
    cpu_train_path,
)
from mmjax.models.layers import max_pool

# Both sides sum the same float32 terms in different orders (a few hundred per channel).
TOLERANCE = 32 * float(jnp.finfo(jnp.float32).eps)


def _run(dtype, train: bool):
    """(output, running mean, running var, d/dx, d/dscale, d/dbias)."""
    norm = nnx.BatchNorm(5, momentum=0.8, dtype=dtype, rngs=nnx.Rngs(0))
    norm.scale[...] = jnp.linspace(0.5, 2.0, 5)
    norm.bias[...] = jnp.linspace(-1.0, 1.0, 5)
    x = jax.random.normal(jax.random.key(0), (3, 6, 4, 5)) * jnp.arange(1.0, 6.0) + 2.0
    weights = jax.random.normal(jax.random.key(1), (3, 6, 4, 5))
    graphdef, state = nnx.split(norm)

    def loss(params, x):
        model = nnx.merge(graphdef, params)
        y = batch_norm(model, x.astype(dtype), train=train)
        return jnp.sum(jnp.tanh(y.astype(jnp.float32)) * weights), (y, nnx.state(model))

    (_, (y, after)), (grads, dx) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        state, x
    )
    return [
        np.asarray(v, np.float32)
        for v in (
            y,
            after["mean"][...],
            after["var"][...],
            dx,
            grads["scale"][...],
            grads["bias"][...],
        )
    ]


@pytest.mark.parametrize("train", [True, False])
def test_equals_flax_batch_norm(train):
    cpu = _run(jnp.float32, train)
    with accelerator_paths():
        flax_own = _run(jnp.float32, train)
    for got, want in zip(cpu, flax_own, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE * np.max(np.abs(want)))
    assert np.max(np.abs(cpu[3])) > 0 and np.max(np.abs(cpu[4])) > 0  # gradients reached x


def test_bfloat16_compute_keeps_float32_statistics():
    y, mean, var, dx, *_ = _run(jnp.bfloat16, True)
    with accelerator_paths():
        want = _run(jnp.bfloat16, True)
    np.testing.assert_allclose(mean, want[1], rtol=1e-6)
    np.testing.assert_allclose(var, want[2], rtol=1e-6)
    np.testing.assert_allclose(y, want[0], atol=0.02)
    np.testing.assert_allclose(dx, want[3], atol=0.02 * np.max(np.abs(want[3])))


def test_gradient_of_the_statistics_equals_jax_own():
    x = jax.random.normal(jax.random.key(2), (4, 3, 7)) * 3.0 - 1.0
    scale, bias = jnp.linspace(0.5, 1.5, 7), jnp.linspace(-0.2, 0.2, 7)
    cotangents = tuple(
        jax.random.normal(jax.random.key(3 + i), shape)
        for i, shape in enumerate([x.shape, (7,), (7,)])
    )
    written = jax.vjp(lambda *a: _normalise(*a, 1e-5), x, scale, bias)[1](cotangents)
    own = jax.vjp(lambda *a: _normalise_forward(*a, 1e-5)[0], x, scale, bias)[1](cotangents)
    for got, want in zip(written, own, strict=True):
        np.testing.assert_allclose(
            got, want, rtol=0, atol=TOLERANCE * float(jnp.max(jnp.abs(want)))
        )


def _pool_run(window: int, dtype, fused: bool):
    """(pooled output, running mean, running var, d/dx, d/dscale, d/dbias) of train-mode
    BatchNorm followed by VALID max pooling, on a map whose sides `window` does not divide, with
    scales of both signs (a negative scale makes a window's smallest input its maximum)."""
    norm = nnx.BatchNorm(6, momentum=0.8, dtype=dtype, rngs=nnx.Rngs(0))
    norm.scale[...] = jnp.array([0.5, -1.5, 2.0, -0.25, 1.0, -3.0])
    norm.bias[...] = jnp.linspace(-1.0, 1.0, 6)
    x = jax.random.normal(jax.random.key(4), (3, 7, 8, 6)) * jnp.arange(1.0, 7.0) + 2.0
    x = x.astype(dtype)
    rows, cols = 7 // window, 8 // window
    weights = jax.random.normal(jax.random.key(5), (3, rows, cols, 6))
    graphdef, state = nnx.split(norm)

    def loss(params, x):
        model = nnx.merge(graphdef, params)
        if fused:
            y = batch_norm_max_pool(model, x, window)
        else:
            y = max_pool(batch_norm(model, x, train=True), window, window)
        return jnp.sum(jnp.tanh(y.astype(jnp.float32)) * weights), (y, nnx.state(model))

    grad = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    (_, (y, after)), (grads, dx) = jax.jit(grad)(state, x)
    values = (y, after["mean"][...], after["var"][...], dx, grads["scale"][...])
    return [np.asarray(v, np.float32) for v in (*values, grads["bias"][...])]


@pytest.mark.parametrize("window", [2, 3])
def test_pooling_before_normalising_equals_normalising_first(window):
    """`batch_norm_max_pool` against `max_pool` after `batch_norm`, both on the CPU path and
    against flax's BatchNorm with XLA's select-and-scatter gradient (`accelerator_paths`)."""
    fused = _pool_run(window, jnp.float32, fused=True)
    assert cpu_train_path(nnx.BatchNorm(6, rngs=nnx.Rngs(0)), jnp.zeros((1, 6)), train=True)
    cpu_first = _pool_run(window, jnp.float32, fused=False)
    with accelerator_paths():
        flax_own = _pool_run(window, jnp.float32, fused=False)
    np.testing.assert_array_equal(fused[0], cpu_first[0])  # a monotone map commutes with max
    for want in (cpu_first, flax_own):
        for got, w in zip(fused, want, strict=True):
            np.testing.assert_allclose(got, w, rtol=0, atol=TOLERANCE * np.max(np.abs(w)))
    dx = fused[3]
    assert np.all(dx[:, 7 // window * window :] != 0)  # the cut rows still get the statistics'
    assert np.max(np.abs(fused[4])) > 0  # gradient, and scale's gradient is there


def test_pooling_before_normalising_in_bfloat16():
    got = _pool_run(2, jnp.bfloat16, fused=True)
    want = _pool_run(2, jnp.bfloat16, fused=False)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)  # float32 statistics
    np.testing.assert_allclose(got[2], want[2], rtol=1e-6)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[3], want[3], atol=0.02 * np.max(np.abs(want[3])))


def test_pooled_gradient_of_the_statistics_equals_jax_own():
    x = jax.random.normal(jax.random.key(6), (2, 5, 6, 4)) * 3.0 - 1.0
    scale, bias = jnp.array([0.5, -1.0, 1.5, -0.1]), jnp.linspace(-0.2, 0.2, 4)
    cotangents = tuple(
        jax.random.normal(jax.random.key(7 + i), shape)
        for i, shape in enumerate([(2, 2, 3, 4), (4,), (4,)])
    )
    written = jax.vjp(lambda *a: _normalise_max_pool(*a, 1e-5, 2), x, scale, bias)[1](cotangents)
    own = jax.vjp(lambda *a: _normalise_max_pool_forward(*a, 1e-5, 2)[0], x, scale, bias)[1](
        cotangents
    )
    for got, want in zip(written, own, strict=True):
        np.testing.assert_allclose(
            got, want, rtol=0, atol=TOLERANCE * float(jnp.max(jnp.abs(want)))
        )
