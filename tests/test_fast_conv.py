"""layers.same_conv and layers.max_pool: the CPU fast paths (depthwise and single-input-channel
convs as shifted slices, tiny maps as patches times a matrix, max_pool's cheaper gradient)
equal the GPU/TPU branches, run on CPU inside `backend.accelerator_paths()`, in values and
gradients; ConvBNReLU.pooled equals pooling after the ReLU, and in eval mode over one input
channel pools by the window's taps."""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax.models.backend import accelerator_paths, cpu_fast_paths
from mmjax.models.layers import ConvBNReLU, max_pool, same_conv
from tests.jaxprs import primitives

# Both branches sum the same float32 products (at most 245 here) in different orders, which
# moves a sum by about sqrt(n) ulps of its terms: 32 eps of an array's largest magnitude.
# Measured: at most 2.7 eps (the depthwise 5x5 kernel's gradient).
TOLERANCE = 32 * float(jnp.finfo(jnp.float32).eps)


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


def _branches(
    f: Callable[..., jax.Array], args: Sequence, seed: int
) -> dict[str, tuple[list[np.ndarray], set[str]]]:
    """{"cpu": ..., "accelerator": ...}: f's output and its gradient with respect to every
    argument (for a random cotangent), and the primitives of that program, per branch."""

    def program(*args):
        out, vjp = jax.vjp(f, *args)
        cotangent = jax.random.normal(jax.random.key(seed), out.shape, out.dtype)
        return out, vjp(cotangent)

    def run() -> tuple[list[np.ndarray], set[str]]:
        traced = jax.jit(program).trace(*args)
        values = [np.asarray(x) for x in jax.tree.leaves(traced.lower().compile()(*args))]
        return values, primitives(traced.jaxpr.jaxpr)

    cpu = run()
    with accelerator_paths():
        return {"cpu": cpu, "accelerator": run()}


def _check_conv(conv: nnx.Conv, x: jax.Array) -> None:
    graphdef, state = nnx.split(conv)
    runs = _branches(lambda state, x: same_conv(nnx.merge(graphdef, state), x), (state, x), 2)
    (cpu, cpu_ops), (accelerator, accelerator_ops) = runs["cpu"], runs["accelerator"]
    assert "dot_general" not in accelerator_ops  # `conv(x)` itself: one convolution
    assert "conv_general_dilated" in accelerator_ops and cpu_ops != accelerator_ops
    for got, want in zip(cpu, accelerator, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE * np.max(np.abs(want)))


@pytest.mark.parametrize(("kernel", "stride", "size"), [(3, 2, 8), (5, 1, 7)])
def test_depthwise_equals_grouped_conv(kernel, stride, size):
    x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 6))
    _check_conv(_conv(6, 6, kernel, stride, groups=6), x)


@pytest.mark.parametrize(("kernel", "stride", "size"), [(3, 2, 9)])
def test_single_input_channel_equals_direct_conv(kernel, stride, size):
    x = jax.random.normal(jax.random.key(2), (2, size, size + 3, 1))
    _check_conv(_conv(1, 5, kernel, stride), x)


@pytest.mark.parametrize(("kernel", "stride", "size"), [(3, 1, 2), (3, 2, 1), (7, 2, 4)])
def test_tiny_map_equals_direct_conv(kernel, stride, size):
    x = jax.random.normal(jax.random.key(1), (2, size, size, 5))
    _check_conv(_conv(5, 4, kernel, stride), x)


@pytest.mark.parametrize(
    ("window", "stride", "padding", "shape", "taps"),
    [
        (2, 2, "VALID", (2, 9, 6, 3), False),
        (3, 2, "SAME", (2, 7, 8, 3), False),
        (2, 2, "VALID", (2, 9, 6, 3), True),
        (3, 3, "VALID", (1, 7, 9, 2), True),
    ],
)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_equals_select_and_scatter(window, stride, padding, shape, taps, ties):
    x = jax.random.normal(jax.random.key(3), shape)
    if ties:  # whole numbers: 39 % and 58 % of the windows hold their maximum twice or more
        x = jnp.round(x)
    pool = lambda x: max_pool(x, window, stride, padding=padding, taps=taps)
    runs = _branches(pool, (x,), 4)
    (cpu, cpu_ops), (accelerator, accelerator_ops) = runs["cpu"], runs["accelerator"]
    assert "select_and_scatter_add" in accelerator_ops  # XLA's own gradient
    assert "select_and_scatter_add" not in cpu_ops
    assert ("reduce_window_max" in cpu_ops) != taps
    for got, want in zip(cpu, accelerator, strict=True):
        np.testing.assert_array_equal(got, want)


def test_max_pool_refuses_taps_for_overlapping_windows():
    with pytest.raises(ValueError, match="taps=True needs stride == window"):
        max_pool(jnp.ones((1, 4, 4, 1)), 3, 2, taps=True)


def test_pooled_block_equals_pooling_after_relu():
    """ConvBNReLU.pooled puts the ReLU after the pooling: the same values and gradients, also
    where a whole window is negative (a zero output, no gradient) on either branch."""
    graphdef, state = nnx.split(ConvBNReLU(3, 4, rngs=nnx.Rngs(5)))
    x = jax.random.normal(jax.random.key(6), (2, 8, 7, 3))
    window, stride, padding = 3, 2, "SAME"

    def outputs(pooled: bool):
        def f(state, x):
            block = nnx.merge(graphdef, state)
            if pooled:
                return block.pooled(x, window, stride, train=True, padding=padding)
            return max_pool(block(x, train=True), window, stride, padding=padding)

        return _branches(f, (state, x), 7)

    reordered, plain = outputs(True), outputs(False)
    for branch, (got, _) in reordered.items():
        want = plain[branch][0]
        assert np.sum(want[0] == 0) > 0  # some windows were all negative
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=0, atol=TOLERANCE * np.max(np.abs(w)))


def test_eval_pooled_single_channel_block_pools_by_taps():
    """In eval mode, a block over one input channel (a spectrogram: the conv is a sum of
    shifted slices) pools as the max of the window's taps on CPU: XLA's reduce-window with
    that sum fused in ran 10x slower. The same values and gradients as the accelerator branch
    (a direct conv, BatchNorm, reduce-window)."""
    graphdef, state = nnx.split(ConvBNReLU(1, 4, rngs=nnx.Rngs(8)))
    x = jax.random.normal(jax.random.key(9), (2, 9, 7, 1))

    def f(state, x):
        return nnx.merge(graphdef, state).pooled(x, 2, 2, train=False)

    runs = _branches(f, (state, x), 10)
    (cpu, cpu_ops), (accelerator, accelerator_ops) = runs["cpu"], runs["accelerator"]
    assert "reduce_window_max" in accelerator_ops and "reduce_window_max" not in cpu_ops
    for got, want in zip(cpu, accelerator, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE * np.max(np.abs(want)))


def test_accelerator_paths_are_traced_apart():
    """The switch is part of jit's cache key: a jitted function is traced once per branch."""
    branches = []

    @jax.jit
    def pooled(x: jax.Array) -> jax.Array:
        branches.append(cpu_fast_paths())
        return max_pool(x, 2, 2)

    x = jnp.ones((1, 4, 4, 1))
    pooled(x)
    with accelerator_paths():
        pooled(x)
        with accelerator_paths(False):
            pooled(x)
    pooled(x)
    assert branches == [True, False]
