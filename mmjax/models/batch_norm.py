"""BatchNorm over the last axis as mmjax runs it: flax's `nnx.BatchNorm` parameters and
statistics, a cheaper gradient on CPU.

JAX's gradient of flax's train-mode BatchNorm makes five passes over the activations
[B, H, W, C] (three reductions, a scaled copy of the incoming gradient, the input gradient);
each is memory-bound on XLA:CPU. The gradient written out needs two per-channel sums
(`sum(dy)`, `sum(dy * (x - mean))`) and one elementwise pass:

    dx = a * dy + b * (x - mean) + c,   per channel:
    a = scale * rstd,  b = 2 dvar / N - scale * rstd^3 * sum(dy * (x - mean)) / N,
    c = dmean / N - a * sum(dy) / N

(dmean, dvar: the cotangents of the batch statistics, zero unless a caller differentiates
them). The CNN-LSTM train step drops from five passes to three per BatchNorm (about 3 ms
of 50, benchmarks/NOTES.md). Statistics are computed as flax computes them (float32 or
wider, E[x^2] - E[x]^2 clipped at zero), so values and running averages agree with
`nnx.BatchNorm` to float rounding (tests/test_batch_norm.py). GPU/TPU, and CPU inside
`backend.accelerator_paths()`, call `nnx.BatchNorm` itself.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.models.backend import cpu_fast_paths


def batch_norm(norm: nnx.BatchNorm, x: jax.Array, *, train: bool) -> jax.Array:
    """`norm(x, use_running_average=not train)` for x [..., C] normalised over every axis but
    the last; in train mode it updates `norm`'s running mean and variance as flax does."""
    plain = (
        not train
        or not cpu_fast_paths()
        or norm.axis not in (-1, x.ndim - 1)
        or norm.axis_name is not None
        or not norm.use_fast_variance
        or norm.scale is None
        or norm.bias is None
    )
    if plain:
        return norm(x, use_running_average=not train)
    x, scale, bias = norm.promote_dtype((x, norm.scale[...], norm.bias[...]), dtype=norm.dtype)
    y, mean, var = _normalise(x, scale, bias, norm.epsilon)
    momentum = norm.momentum
    # `set_value`, not `norm.mean[...] = ...`: flax's indexed assignment probes the new value's
    # `.sharding`, and on a tracer JAX builds that error's message by walking every equation
    # traced so far (jax-ml/jax#40041), making a deep network's trace quadratic: 0.9 s of the
    # ResNet-50 clips model's train-step trace.
    norm.mean.set_value(jax.lax.stop_gradient(momentum * norm.mean[...] + (1 - momentum) * mean))
    norm.var.set_value(jax.lax.stop_gradient(momentum * norm.var[...] + (1 - momentum) * var))
    return y


def _statistics(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(x in at least float32, mean [C], variance [C]) over every axis of x but the last."""
    wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(wide, axes)
    var = jnp.maximum(0.0, jnp.mean(wide * wide, axes) - mean * mean)
    return wide, mean, var


def _normalise_forward(x, scale, bias, epsilon):
    wide, mean, var = _statistics(x)
    rstd = jax.lax.rsqrt(var + epsilon)
    y = (wide - mean) * (rstd * scale) + bias
    out_dtype = jnp.result_type(x, scale, bias)
    return (y.astype(out_dtype), mean, var), (x, mean, rstd, scale, bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _normalise(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """x [..., C] -> (normalised, scaled and shifted x, batch mean [C], batch variance [C])."""
    return _normalise_forward(x, scale, bias, epsilon)[0]


def _normalise_backward(epsilon, residuals, cotangents):
    x, mean, rstd, scale, bias = residuals
    dy, dmean, dvar = cotangents
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    centred = x.astype(mean.dtype) - mean
    dy = dy.astype(mean.dtype)
    sum_dy, sum_dy_centred = jnp.sum(dy, axes), jnp.sum(dy * centred, axes)
    a = scale * rstd
    b = 2 * dvar / n - scale * rstd**3 * sum_dy_centred / n
    c = dmean / n - a * sum_dy / n
    dx = a * dy + b * centred + c
    dscale, dbias = rstd * sum_dy_centred, sum_dy
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


_normalise.defvjp(_normalise_forward, _normalise_backward)
