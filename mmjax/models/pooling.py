"""Non-overlapping (VALID, stride = window) pooling windows as strided slices, for the CPU
programs of `batch_norm.batch_norm_max_pool` and `layers.ConvBNReLU.pooled`."""

import functools
import itertools

import jax
import jax.numpy as jnp


def window_grid(x: jax.Array, window: int) -> jax.Array:
    """x [B, H, W, C] -> its VALID pooling windows [B, H', window, W', window, C] (H' = H //
    window; the rows and columns VALID pooling leaves out are cut): a slice and a reshape."""
    b, h, w, c = x.shape
    rows, cols = h // window, w // window
    return x[:, : rows * window, : cols * window].reshape(b, rows, window, cols, window, c)


def window_taps(grid: jax.Array) -> list[jax.Array]:
    """The elements at each position of the windows of `window_grid`, row-major over the
    window: window^2 strided slices [B, H', W', C]."""
    window = grid.shape[2]
    return [grid[:, :, i, :, j] for i, j in itertools.product(range(window), range(window))]


def window_max(x: jax.Array, window: int) -> jax.Array:
    """`nnx.max_pool(x, (window, window), (window, window))` (VALID) for x [B, H, W, C] as an
    elementwise max of the window's taps: [B, H // window, W // window, C], the same values.

    XLA:CPU fuses the producer of a reduce-window's operand into its loop, and when that
    producer is itself a sum of shifted slices (a single-channel convolution's taps,
    `layers.same_conv`) the fused loop ran 10x slower than the taps' maximum: the CNN-LSTM's
    first block in eval mode took 11-12 ms against 0.8-1.2 ms (batch 64, [101, 40] -> 16
    channels). `layers.max_pool(..., taps=True)` runs it with max pooling's usual gradient
    (to each window's first maximum), where JAX's own would split ties."""
    return functools.reduce(jnp.maximum, window_taps(window_grid(x, window)))
