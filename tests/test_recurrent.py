"""mmjax.models.recurrent against flax's nnx.RNN / nnx.Bidirectional: values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax.models.recurrent import _lstm_gates, run_bidirectional, run_rnn

CELLS = {"lstm": nnx.OptimizedLSTMCell, "gru": nnx.GRUCell}
B, T, F, H = 3, 7, 5, 4


def _inputs():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((B, T, F)), jnp.float32)
    lengths = jnp.asarray([7, 3, 1], jnp.int32)
    weights = jnp.asarray(rng.standard_normal((B, T, 2 * H)), jnp.float32)
    return x, lengths, weights


def _randomise(module: nnx.Module) -> None:
    """Nonzero biases too (flax initialises them to zero, which would hide a bias bug)."""
    leaves = nnx.state(module, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(leaves))))
    nnx.update(module, jax.tree.map(lambda p: 0.5 * jax.random.normal(next(keys), p.shape), leaves))


def _grads(module, loss, x):
    """Gradients of `loss(module, x)` with respect to the parameters and x."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    return jax.grad(lambda p, x: loss(nnx.merge(graphdef, p, rest, copy=True), x), argnums=(0, 1))(
        params, x
    )


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_bidirectional_equals_flax_in_values_and_gradients(kind):
    cell = CELLS[kind]
    layer = nnx.Bidirectional(
        nnx.RNN(cell(F, H, rngs=nnx.Rngs(0))), nnx.RNN(cell(F, H, rngs=nnx.Rngs(1)))
    )
    _randomise(layer)
    x, lengths, w = _inputs()
    valid = (jnp.arange(T) < lengths[:, None])[..., None]  # past a row's length: not compared
    ours = run_bidirectional(layer, x, lengths)
    theirs = layer(x, seq_lengths=lengths)
    np.testing.assert_allclose(ours * valid, theirs * valid, atol=2e-6)

    def loss_with(run):
        return lambda m, x: jnp.sum(run(m, x) * w * valid)

    ours = _grads(layer, loss_with(lambda m, x: run_bidirectional(m, x, lengths)), x)
    theirs = _grads(layer, loss_with(lambda m, x: m(x, seq_lengths=lengths)), x)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_unidirectional_equals_flax_in_values_and_gradients(kind):
    rnn = nnx.RNN(CELLS[kind](F, H, rngs=nnx.Rngs(0)))
    _randomise(rnn)
    x, _, w = _inputs()
    np.testing.assert_allclose(run_rnn(rnn, x), rnn(x), atol=2e-6)
    ours = _grads(rnn, lambda m, x: jnp.sum(run_rnn(m, x) * w[..., :H]), x)
    theirs = _grads(rnn, lambda m, x: jnp.sum(m(x) * w[..., :H]), x)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_computes_in_the_cells_dtype():
    """The train step's bfloat16 mode sets `dtype` on the cell's layers: outputs and the
    recurrence follow it (flax's own RNN keeps a float32 carry)."""
    rnn = nnx.RNN(nnx.OptimizedLSTMCell(F, H, rngs=nnx.Rngs(0)))
    rnn.cell.dense_i.dtype = rnn.cell.dense_h.dtype = jnp.bfloat16
    x, _, _ = _inputs()
    out = run_rnn(rnn, x)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        out.astype(jnp.float32), run_rnn(rnn, x.astype(jnp.float32)).astype(jnp.float32), atol=0.05
    )


def test_other_cells_are_refused():
    rnn = nnx.RNN(nnx.SimpleCell(F, H, rngs=nnx.Rngs(0)))
    with pytest.raises(TypeError, match="LSTM and GRU"):
        run_rnn(rnn, _inputs()[0])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_lstm_gates_match_the_four_activations_to_saturation(dtype):
    """The one-pass gates (tanh through 2 sigmoid(2x) - 1) against sigmoid / tanh per block,
    from 0 to far past saturation, where a wrong sign or scale would show first."""
    z = jnp.stack([jnp.linspace(-60.0, 60.0, 40), jnp.linspace(-1e-3, 1e-3, 40), jnp.zeros(40)])
    z = z.astype(dtype)  # [3, 4H], H = 10
    i, f, g, o = jnp.split(z.astype(jnp.float32), 4, axis=-1)
    expected = jnp.concatenate(
        [jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)], axis=-1
    )
    got = _lstm_gates(z)
    assert got.dtype == jnp.float32 and bool(jnp.isfinite(got).all())
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-7)
