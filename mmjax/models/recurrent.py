"""LSTM and GRU layers as mmjax runs them: flax's cells' parameters, a faster program.

`nnx.RNN` calls its cell once per time step, so every step multiplies its input by the
input weights, and the backward pass (JAX's transpose of the scan) adds into the weight
gradients inside the loop, one small matmul per step. Here:

- the input projection of all steps is one matmul before the loop (`[T * B, F] @ [F, G]`);
- the loop does only the recurrent product `h @ W_h` and the gate arithmetic; both directions
  of a bidirectional layer step in the same loop (two independent matmuls per iteration);
- the backward pass is written by hand (`jax.custom_vjp`), the input projection's included:
  the loop computes only the gate gradients and `dh @ W_h^T`; the input and recurrent weight
  gradients are one matmul each after it (one for both, for the LSTM);
- an LSTM step's four gate activations are one elementwise pass over [B, 4H] (`_lstm_gates`),
  and so are its four gate gradients, rather than four passes and a concatenate.

The parameters stay in flax's `OptimizedLSTMCell` / `GRUCell` (held by `nnx.RNN` /
`nnx.Bidirectional`), with their paths and initialisers, so checkpoints, pretrained imports and
the PyTorch mirrors are unchanged; only the cells' `__call__` is bypassed. Values equal
`nnx.RNN`'s to float32 rounding (tests/test_recurrent.py).

Layouts: inputs [B, T, F] batch-major as the encoders hold them; inside, time-major
[T, B, ...]; gates i, f, g, o (LSTM) and r, z, n (GRU) in flax's order.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype
from flax.nnx.nn.recurrent import flip_sequences

Arrays = tuple[jax.Array, ...]

# Steps per iteration of the recurrences' loops. On the CPU a loop iteration costs a fixed
# overhead beside its small matmuls: at 4, the BiLSTM train step (T = 32) took 27.5-28.1
# against 28.9-29.3 ms, the BiGRU's 27.3 against 27.7; 8 was no faster and compiled longer.
_UNROLL = 4

# ----------------------------------------------------------------------------------------------
# The recurrences: projs (one [T, B, G] per direction, input projection and bias included) and
# recurrent kernels (one [H, G] per direction) -> hidden states, one [T, B, H] per direction.


def _gate_mask(hidden: int) -> jax.Array:
    """[4H] bool, true on the g block of an LSTM's i, f, g, o gates."""
    return jnp.arange(4 * hidden) // hidden == 2


def _lstm_gates(z: jax.Array) -> jax.Array:
    """Pre-activations z [B, 4H] -> activations sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
    [B, 4H], in at least float32.

    One elementwise pass: tanh(x) = 2 sigmoid(2x) - 1 lets the g block share the others'
    sigmoid, so XLA emits one fused loop per step instead of a split, four activations and a
    concatenate (the LSTM's forward loop ran 1.8x faster on the CPU). The identity loses
    relative precision for |g| below about 1e-7 only (absolute error ~6e-8)."""
    is_g = _gate_mask(z.shape[-1] // 4)
    z = z.astype(jnp.promote_types(z.dtype, jnp.float32))
    s = jax.nn.sigmoid(jnp.where(is_g, 2 * z, z))
    return jnp.where(is_g, 2 * s - 1, s)


def _lstm_step(c: jax.Array, h: jax.Array, p: jax.Array, w_h: jax.Array):
    acts = _lstm_gates(p + h @ w_h).astype(c.dtype)
    i, f, g, o = jnp.split(acts, 4, axis=-1)
    c = f * c + i * g
    return c, o * jnp.tanh(c), acts


def _lstm_forward(projs: Arrays, w_hs: Arrays):
    def step(carry, ps):
        out = [_lstm_step(c, h, p, w) for (c, h), p, w in zip(carry, ps, w_hs, strict=True)]
        return tuple((c, h) for c, h, _ in out), tuple(out)

    zeros = tuple(
        (jnp.zeros(p.shape[1:2] + w.shape[:1], p.dtype),) * 2
        for p, w in zip(projs, w_hs, strict=True)
    )
    _, per_step = jax.lax.scan(step, zeros, projs, unroll=_UNROLL)
    hs = tuple(h for _, h, _ in per_step)
    return hs, per_step


def _shifted(x: jax.Array) -> jax.Array:
    """x [T, ...] -> the value before each step: [0, x_0, ..., x_{T-2}]."""
    return jnp.concatenate([jnp.zeros_like(x[:1]), x[:-1]], axis=0)


def _lstm_backward(per_step, w_hs: Arrays, dhs: Arrays):
    def step(carry, xs):
        new_carry, dzs = [], []
        for (dh_next, dc_next), (dh_out, c, c_prev, acts), w in zip(carry, xs, w_hs, strict=True):
            i, f, g, o = jnp.split(acts, 4, axis=-1)
            dh = dh_out + dh_next
            tanh_c = jnp.tanh(c)
            dc = dc_next + dh * o * (1 - tanh_c * tanh_c)
            # The four gates' gradients as one elementwise pass over [B, 4H] (each gate's
            # upstream gradient, times its partner in the cell, times its activation's slope)
            upstream = jnp.concatenate([dc, dc, dc, dh], axis=-1)
            partner = jnp.concatenate([g, c_prev, i, tanh_c], axis=-1)
            slope = jnp.where(_gate_mask(c.shape[-1]), 1 - acts * acts, acts * (1 - acts))
            dz = upstream * partner * slope
            new_carry.append((dz @ w.T, dc * f))
            dzs.append(dz)
        return tuple(new_carry), tuple(dzs)

    xs = tuple((dh, c, _shifted(c), acts) for dh, (c, _, acts) in zip(dhs, per_step, strict=True))
    zeros = tuple((jnp.zeros_like(dh[0]),) * 2 for dh in dhs)
    _, dzs = jax.lax.scan(step, zeros, xs, reverse=True, unroll=_UNROLL)
    terms = tuple((_shifted(h), dz) for (_, h, _), dz in zip(per_step, dzs, strict=True))
    return dzs, terms


def _gru_step(h: jax.Array, p: jax.Array, w_h: jax.Array):
    a = h @ w_h
    p_r, p_z, p_n = jnp.split(p, 3, axis=-1)
    a_r, a_z, a_n = jnp.split(a, 3, axis=-1)
    r, z = jax.nn.sigmoid(p_r + a_r), jax.nn.sigmoid(p_z + a_z)
    n = jnp.tanh(p_n + r * a_n)
    return (1 - z) * n + z * h, jnp.concatenate([r, z, n, a_n], axis=-1)


def _gru_forward(projs: Arrays, w_hs: Arrays):
    def step(carry, ps):
        out = [_gru_step(h, p, w) for h, p, w in zip(carry, ps, w_hs, strict=True)]
        return tuple(h for h, _ in out), tuple(out)

    zeros = tuple(
        jnp.zeros(p.shape[1:2] + w.shape[:1], p.dtype) for p, w in zip(projs, w_hs, strict=True)
    )
    _, per_step = jax.lax.scan(step, zeros, projs, unroll=_UNROLL)
    return tuple(h for h, _ in per_step), per_step


def _gru_backward(per_step, w_hs: Arrays, dhs: Arrays):
    def step(carry, xs):
        new_carry, dps = [], []
        for dh_next, (dh_out, h_prev, saved), w in zip(carry, xs, w_hs, strict=True):
            r, z, n, a_n = jnp.split(saved, 4, axis=-1)
            dh = dh_out + dh_next
            dn = dh * (1 - z) * (1 - n * n)
            dr = dn * a_n * r * (1 - r)
            dz = dh * (h_prev - n) * z * (1 - z)
            da = jnp.concatenate([dr, dz, dn * r], axis=-1)  # d(h_prev @ w_h)
            new_carry.append(dh * z + da @ w.T)
            dps.append((jnp.concatenate([dr, dz, dn], axis=-1), da))
        return tuple(new_carry), tuple(dps)

    h_prevs = tuple(_shifted(h) for h, _ in per_step)
    xs = tuple(zip(dhs, h_prevs, (saved for _, saved in per_step), strict=True))
    zeros = tuple(jnp.zeros_like(dh[0]) for dh in dhs)
    _, grads = jax.lax.scan(step, zeros, xs, reverse=True, unroll=_UNROLL)
    dprojs = tuple(dp for dp, _ in grads)
    terms = tuple((h_prev, da) for h_prev, (_, da) in zip(h_prevs, grads, strict=True))
    return dprojs, terms


def _weight_gradients(
    x: jax.Array, dproj: jax.Array, h_prev: jax.Array, d_rec: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(dW_in [F, G], dW_h [H, G]) from the inputs x [T, B, F], the states before each step
    h_prev [T, B, H], and the gradients of the input and recurrent products dproj, d_rec
    [T, B, G]. When the two are one array (the LSTM's), one matmul over [x, h_prev]."""

    def flat(a: jax.Array) -> jax.Array:  # [T * B, ...]
        return a.reshape(-1, a.shape[-1])

    if d_rec is dproj:
        dw = flat(jnp.concatenate([x, h_prev], axis=-1)).T @ flat(dproj)
        return dw[: x.shape[-1]], dw[x.shape[-1] :]
    return flat(x).T @ flat(dproj), flat(h_prev).T @ flat(d_rec)


def _recurrence(forward, backward):
    """A custom-VJP recurrence, input projection included, from its loop's forward
    (projs, w_hs -> hs, residuals) and backward (residuals, w_hs, dhs -> dprojs, and per
    direction (h_prev, d_rec) for the recurrent kernel's gradient) rules:
    (xs [B, T, F], w_ins [F, G], biases [G], w_hs [H, G]), one each per direction -> hs
    [B, T, H] per direction.

    The projection's gradients are written out too: left to JAX, its transpose and the
    weight gradients' layouts cost XLA:CPU four [T * B, G] copies (BiLSTM layer gradient 29.4
    -> 26.2 ms; 25.4 with the LSTM's two weight gradients as one matmul). The weight
    gradients contract over [T * B] flattened: contracting over T and B, XLA transposed the
    gradient [T, B, G] to batch-major first (two more copies)."""

    def fwd(xs, w_ins, biases, w_hs):
        xs = tuple(jnp.swapaxes(x, 0, 1) for x in xs)  # [T, B, F]
        projs = tuple(x @ w + b for x, w, b in zip(xs, w_ins, biases, strict=True))
        hs, per_step = forward(projs, w_hs)
        return tuple(jnp.swapaxes(h, 0, 1) for h in hs), (xs, w_ins, w_hs, per_step)

    def run(xs: Arrays, w_ins: Arrays, biases: Arrays, w_hs: Arrays) -> Arrays:
        return fwd(xs, w_ins, biases, w_hs)[0]

    def bwd(residuals, dhs):
        xs, w_ins, w_hs, per_step = residuals
        dhs = tuple(jnp.swapaxes(dh, 0, 1) for dh in dhs)
        dprojs, terms = backward(per_step, w_hs, dhs)
        dxs, dw_ins, dbiases, dw_hs = [], [], [], []
        for x, w_in, dproj, (h_prev, d_rec) in zip(xs, w_ins, dprojs, terms, strict=True):
            dw_in, dw_h = _weight_gradients(x, dproj, h_prev, d_rec)
            dxs.append(jnp.swapaxes(dproj @ w_in.T, 0, 1))
            dw_ins.append(dw_in)
            dbiases.append(dproj.sum((0, 1)))
            dw_hs.append(dw_h)
        return tuple(dxs), tuple(dw_ins), tuple(dbiases), tuple(dw_hs)

    recurrence = jax.custom_vjp(run)
    recurrence.defvjp(fwd, bwd)
    return recurrence


_lstm = _recurrence(_lstm_forward, _lstm_backward)
_gru = _recurrence(_gru_forward, _gru_backward)

# ----------------------------------------------------------------------------------------------
# Layers over flax's cells


def _cell_weights(cell: nnx.RNNCellBase) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(input kernel [F, G], bias [G], recurrent kernel [H, G]) of an OptimizedLSTMCell (its
    bias sits on dense_h) or a GRUCell (on dense_i), in the cell's compute dtype."""
    if isinstance(cell, nnx.OptimizedLSTMCell):
        bias = cell.dense_h.bias[...]
    elif isinstance(cell, nnx.GRUCell):
        bias = cell.dense_i.bias[...]
    else:
        raise TypeError(f"mmjax.models.recurrent runs LSTM and GRU cells, not {type(cell)}")
    w_in, bias, w_h = cell.dense_i.kernel[...], bias, cell.dense_h.kernel[...]
    return promote_dtype((w_in, bias, w_h), dtype=cell.dense_i.dtype)


def _run(cells: Sequence[nnx.RNNCellBase], xs: Sequence[jax.Array]) -> Arrays:
    """Each cell over its own input [B, T, F], all in one loop -> one [B, T, H] per cell."""
    if len({type(c) for c in cells}) != 1:
        raise TypeError("the directions of a layer must use the same kind of cell")
    weights = [_cell_weights(cell) for cell in cells]
    xs = tuple(x.astype(w_in.dtype) for x, (w_in, _, _) in zip(xs, weights, strict=True))
    recurrence = _lstm if isinstance(cells[0], nnx.OptimizedLSTMCell) else _gru
    return recurrence(xs, *(tuple(parts) for parts in zip(*weights, strict=True)))


def run_rnn(rnn: nnx.RNN, x: jax.Array) -> jax.Array:
    """`rnn(x)` for an nnx.RNN over an LSTM or GRU cell, zero initial state:
    x [B, T, F] -> outputs [B, T, H]."""
    return _run([rnn.cell], [x])[0]


def run_bidirectional(layer: nnx.Bidirectional, x: jax.Array, lengths: jax.Array) -> jax.Array:
    """`layer(x, seq_lengths=lengths)` for an nnx.Bidirectional of LSTM or GRU cells:
    x [B, T, F] with each row's real steps first (lengths [B]) -> [B, T, 2H], the forward
    outputs then the backward ones. The backward direction reads each row reversed within its
    length, as flax's does; outputs past a row's length are not meaningful (mask them)."""
    reversed_x = flip_sequences(x, lengths, num_batch_dims=1, time_major=False)
    cells = [layer.forward_rnn.cell, layer.backward_rnn.cell]
    forward, backward = _run(cells, [x, reversed_x])
    backward = flip_sequences(backward, lengths, num_batch_dims=1, time_major=False)
    return jnp.concatenate([forward, backward], axis=-1)
