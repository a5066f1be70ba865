"""mmjax.perf: the FLOP counter against the closed forms in its docstring, the peak table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax import perf
from mmjax.models.layers import ConvBNReLU
from mmjax.models.text import BiLSTM, TextTransformer


def _encoder_flops(encoder: nnx.Module, x: jax.Array) -> perf.FlopCount:
    graphdef, state = nnx.split(encoder)
    return perf.matmul_flops(lambda s, x: nnx.merge(graphdef, s)(x, train=False).pooled, state, x)


def test_bilstm_matches_closed_form():
    b, length, d_in, h = 3, 7, 12, 8
    encoder = BiLSTM(BiLSTM.Config(vocab_size=50, embed_dim=d_in, hidden=h), rngs=nnx.Rngs(0))
    ids = jnp.ones((b, length), jnp.int32)
    count = _encoder_flops(encoder, ids)
    assert count.flops == b * 16 * length * h * (d_in + h)
    assert count.exact
    # the scan body is multiplied by the length: twice the tokens, twice the FLOPs
    assert _encoder_flops(encoder, jnp.ones((b, 2 * length), jnp.int32)).flops == 2 * count.flops


def test_transformer_matches_closed_form():
    b, length, d, inter, layers = 2, 9, 32, 64, 2
    cfg = TextTransformer.Config(
        vocab_size=100, hidden=d, layers=layers, heads=4, intermediate=inter, max_len=16
    )
    encoder = TextTransformer(cfg, rngs=nnx.Rngs(0))
    matmul_params = layers * (4 * d * d + 2 * d * inter)  # Q, K, V, output; the MLP
    expected = b * (2 * matmul_params * length + 4 * layers * length**2 * d)
    assert _encoder_flops(encoder, jnp.ones((b, length), jnp.int32)).flops == expected


def test_conv_matches_closed_form():
    b, side, c_in, c_out = 2, 6, 3, 5
    block = ConvBNReLU(c_in, c_out, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(block)
    x = jnp.ones((b, side, side, c_in))
    count = perf.matmul_flops(lambda s, x: nnx.merge(graphdef, s)(x, train=False), state, x)
    assert count.flops == b * 2 * side * side * c_in * c_out * 3 * 3


def test_backward_counts_both_gradient_products():
    w, x = jnp.ones((16, 8)), jnp.ones((4, 16))
    forward = perf.matmul_flops(lambda w: x @ w, w).flops
    # d/dw only: one product for the weight gradient (no input gradient is needed)
    assert perf.matmul_flops(jax.grad(lambda w: jnp.sum(x @ w)), w).flops == 2 * forward
    both = jax.grad(lambda w, x: jnp.sum(x @ w), argnums=(0, 1))
    assert perf.matmul_flops(both, w, x).flops == 3 * forward


def test_counts_a_jit_that_carries_compiler_options():
    """mmjax's model programs are jitted with compiler options, which JAX refuses to trace
    inside make_jaxpr; the count goes through the jitted function's Python function."""
    w, x = jnp.ones((16, 8)), jnp.ones((4, 16))
    jitted = jax.jit(lambda w: x @ w, compiler_options={"xla_backend_optimization_level": 1})
    assert perf.matmul_flops(jitted, w).flops == 2 * 4 * 16 * 8


def test_while_loop_is_flagged_inexact():
    def loop(w):
        return jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] @ w, c[1] + 1), (w, 0))[0]

    count = perf.matmul_flops(loop, jnp.ones((4, 4)))
    assert count.flops == 2 * 4**3 and not count.exact


def test_xla_cross_check_on_a_plain_matmul():
    a = jnp.ones((64, 32))
    compiled = perf.compile_timed(jax.jit(lambda a: a @ a.T), a)
    assert compiled.xla_flops == perf.matmul_flops(lambda a: a @ a.T, a).flops == 2 * 64 * 64 * 32


@pytest.mark.parametrize(
    ("kind", "dtype", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
        ("NVIDIA H100 PCIe", "bfloat16", 756e12),
        ("NVIDIA H200", "bfloat16", 989e12),
        ("NVIDIA A100-SXM4-80GB", "float32", 156e12),
        ("TPU v4", "bfloat16", 275e12),
        ("TPU v5 lite", "bfloat16", 197e12),
        ("TPU v5p", "bfloat16", 459e12),
        ("TPU v6 lite", "bfloat16", 918e12),
        ("TPU v6 Lite", "float32", 918e12),  # profilers capitalise it
        ("TPU v5", "bfloat16", 459e12),  # how JAX spells a v5p
        ("TPU v4 lite", "bfloat16", 137e12),
        ("NVIDIA H200", "float32", 494e12),
        ("cpu", "float32", None),
        ("NVIDIA H200", "int8", None),
    ],
)
def test_peak_table(kind, dtype, peak):
    assert perf.table_peak(kind, dtype) == peak


def test_every_peak_table_key_finds_its_own_row():
    """No key is shadowed by a shorter one it contains ("TPU v5" in "TPU v5 lite")."""
    for key, peaks in perf._PEAKS.items():
        for kind in (key, f"NVIDIA {key}", key.upper()):
            assert {d: perf.table_peak(kind, d) for d in peaks} == peaks, kind


def test_stats_and_mfu():
    stats = perf.Stats(tuple(np.linspace(0.001, 0.010, 10)))
    summary = stats.summary()
    assert summary["step_ms_p10"] < summary["step_ms_p50"] < summary["step_ms_p90"]
    assert perf.mfu(1e9, 0.5, 4e9) == 0.5
    assert perf.mfu(1e9, 0.5, None) is None
