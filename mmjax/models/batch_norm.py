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
`nnx.BatchNorm` to float rounding (tests/test_batch_norm.py). BatchNorm followed by max
pooling over non-overlapping windows pools first (`batch_norm_max_pool`): the CNN-LSTM's and
the small CNNs' blocks. GPU/TPU, and CPU inside `backend.accelerator_paths()`, call
`nnx.BatchNorm` itself.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.models.backend import cpu_fast_paths
from mmjax.models.pooling import window_grid, window_taps


def cpu_train_path(norm: nnx.BatchNorm, x: jax.Array, *, train: bool) -> bool:
    """Whether `batch_norm` (and `batch_norm_max_pool`) take mmjax's own train-mode program
    for `norm` on x, rather than calling `nnx.BatchNorm`: train mode on the CPU, statistics over
    every axis but the last, one device's batch, flax's default statistics, scale and bias."""
    return (
        train
        and cpu_fast_paths()
        and norm.axis in (-1, x.ndim - 1)
        and norm.axis_name is None
        and norm.use_fast_variance
        and norm.scale is not None
        and norm.bias is not None
    )


def batch_norm(norm: nnx.BatchNorm, x: jax.Array, *, train: bool) -> jax.Array:
    """`norm(x, use_running_average=not train)` for x [..., C] normalised over every axis but
    the last; in train mode it updates `norm`'s running mean and variance as flax does."""
    if not cpu_train_path(norm, x, train=train):
        return norm(x, use_running_average=not train)
    x, scale, bias = norm.promote_dtype((x, norm.scale[...], norm.bias[...]), dtype=norm.dtype)
    y, mean, var = _normalise(x, scale, bias, norm.epsilon)
    _update_running_statistics(norm, mean, var)
    return y


def batch_norm_max_pool(norm: nnx.BatchNorm, x: jax.Array, window: int) -> jax.Array:
    """`max_pool(batch_norm(norm, x, train=True), window, window)` (VALID padding) for x
    [B, H, W, C] where `cpu_train_path` holds: [B, H // window, W // window, C].

    BatchNorm is a per-channel map y = (x - mean) * a + bias (a = scale * rstd), monotone in x,
    so a window's largest y is the image of its largest x where a >= 0 and of its smallest x
    where a < 0, to the bit (rounding is monotone too). Pooling x first and normalising the
    pooled map saves the normalised map's passes over [B, H, W, C]; the gradient's sums run over
    the pooled map, and the input gradient is one pass (`_normalise_max_pool_backward`).
    Deviation: the gradient goes to the window's first largest (or smallest) x, which is the
    first largest y as XLA's select-and-scatter picks it except where rounding makes two
    different x give the same y, or where scale is exactly 0 (every y equal: the reference
    picks the window's first element; only `scale`'s gradient differs then)."""
    x, scale, bias = norm.promote_dtype((x, norm.scale[...], norm.bias[...]), dtype=norm.dtype)
    y, mean, var = _normalise_max_pool(x, scale, bias, norm.epsilon, window)
    _update_running_statistics(norm, mean, var)
    return y


def _update_running_statistics(norm: nnx.BatchNorm, mean: jax.Array, var: jax.Array) -> None:
    momentum = norm.momentum
    # `set_value`, not `norm.mean[...] = ...`: flax's indexed assignment probes the new value's
    # `.sharding`, and on a tracer JAX builds that error's message by walking every equation
    # traced so far (jax-ml/jax#40041), making a deep network's trace quadratic: 0.9 s of the
    # ResNet-50 clips model's train-step trace.
    norm.mean.set_value(jax.lax.stop_gradient(momentum * norm.mean[...] + (1 - momentum) * mean))
    norm.var.set_value(jax.lax.stop_gradient(momentum * norm.var[...] + (1 - momentum) * var))


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


def _normalise_max_pool_forward(x, scale, bias, epsilon, window):
    mean, var = _statistics(x)[1:]
    rstd = jax.lax.rsqrt(var + epsilon)
    a = rstd * scale
    taps = window_taps(window_grid(x, window))
    largest, smallest = functools.reduce(jnp.maximum, taps), functools.reduce(jnp.minimum, taps)
    chosen = jnp.where(a >= 0, largest, smallest)
    y = (chosen.astype(mean.dtype) - mean) * a + bias
    out_dtype = jnp.result_type(x, scale, bias)
    return (y.astype(out_dtype), mean, var), (x, chosen, mean, rstd, scale, bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _normalise_max_pool(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, window: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """x [B, H, W, C] -> (the normalised, scaled and shifted map max-pooled over `window` x
    `window` windows [B, H', W', C], batch mean [C], batch variance [C])."""
    return _normalise_max_pool_forward(x, scale, bias, epsilon, window)[0]


def _normalise_max_pool_backward(epsilon, window, residuals, cotangents):
    """`_normalise_backward` with dy zero but at each window's chosen element: its sums run over
    the pooled map, and dx = (a * g at the chosen elements) + b * (x - mean) + c in one pass."""
    x, chosen, mean, rstd, scale, bias = residuals
    g, dmean, dvar = cotangents
    n = x.size // x.shape[-1]
    g = g.astype(mean.dtype)
    centred_chosen = chosen.astype(mean.dtype) - mean
    sum_g, sum_g_centred = jnp.sum(g, (0, 1, 2)), jnp.sum(g * centred_chosen, (0, 1, 2))
    a = scale * rstd
    b = 2 * dvar / n - scale * rstd**3 * sum_g_centred / n
    c = dmean / n - a * sum_g / n
    # Which element of each window gets a * g: the first (row-major) equal to the chosen one.
    grid = window_grid(x, window)
    first = jnp.full(chosen.shape, window * window, jnp.int32)
    for position, tap in reversed(list(enumerate(window_taps(grid)))):
        first = jnp.where(tap == chosen, position, first)
    # dx over the windows, elementwise on the grid (per-window values broadcast over it)
    order = jnp.arange(window * window).reshape(window, 1, window, 1)
    routed = jnp.where(order == first[:, :, None, :, None], (a * g)[:, :, None, :, None], 0.0)
    dx = routed + b * (grid.astype(mean.dtype) - mean) + c
    batch, rows, _, cols, _, channels = grid.shape
    dx = dx.reshape(batch, rows * window, cols * window, channels)
    if dx.shape != x.shape:  # the rows and columns VALID pooling cut get the statistics' terms
        cut = lambda part: b * (part.astype(mean.dtype) - mean) + c
        dx = jnp.concatenate([dx, cut(x[:, : rows * window, cols * window :])], axis=2)
        dx = jnp.concatenate([dx, cut(x[:, rows * window :])], axis=1)
    dscale, dbias = rstd * sum_g_centred, sum_g
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


_normalise_max_pool.defvjp(_normalise_max_pool_forward, _normalise_max_pool_backward)
