"""Shared NNX building blocks and the Features type every encoder returns."""

import functools
import itertools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

from mmjax.models.backend import cpu_fast_paths
from mmjax.models.batch_norm import batch_norm, batch_norm_max_pool, cpu_train_path
from mmjax.models.pooling import window_max

Padding = tuple[tuple[int, int], tuple[int, int]]


class Features(NamedTuple):
    """An encoder's output: token features for attention fusions, pooled ones for vector fusions.

    tokens [B, T, D], token_mask [B, T] bool (False = padding), pooled [B, D].
    """

    tokens: jax.Array
    token_mask: jax.Array
    pooled: jax.Array


def masked_mean(tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over axis 1 of tokens [B, T, D] where mask [B, T] is True; zeros if none is."""
    weights = mask.astype(tokens.dtype)[..., None]
    total = jnp.sum(tokens * weights, axis=1)
    return total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


def features_from_tokens(tokens: jax.Array, token_mask: jax.Array | None = None) -> Features:
    """Features with a masked-mean pooled vector; tokens [B, T, D]."""
    if token_mask is None:
        token_mask = jnp.ones(tokens.shape[:2], dtype=bool)
    return Features(tokens, token_mask, masked_mean(tokens, token_mask))


def present_pooled(
    features: dict[str, Features], modality_mask: dict[str, jax.Array], m: str
) -> tuple[jax.Array, jax.Array]:
    """(present [B, 1] bool, pooled [B, D_m] with zeros where modality m is missing)."""
    present = modality_mask[m][:, None]
    return present, jnp.where(present, features[m].pooled, 0.0)


class MLP(nnx.Module):
    """Linear -> GELU -> dropout, repeated; the last layer is linear only. x [..., D_in]."""

    def __init__(self, dims: tuple[int, ...], *, dropout: float = 0.0, rngs: nnx.Rngs):
        self.layers = nnx.List(
            [nnx.Linear(d_in, d_out, rngs=rngs) for d_in, d_out in itertools.pairwise(dims)]
        )
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.dropout(nnx.gelu(x), deterministic=not train)
        return x


class ConvBNReLU(nnx.Module):
    """Conv (no bias) -> BatchNorm -> optional ReLU over NHWC images."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int = 3,
        stride: int = 1,
        *,
        relu: bool = True,
        rngs: nnx.Rngs,
    ):
        self.conv = nnx.Conv(
            c_in, c_out, (kernel, kernel), (stride, stride), use_bias=False, rngs=rngs
        )
        self.norm = nnx.BatchNorm(c_out, momentum=0.9, rngs=rngs)
        self.relu = relu

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = batch_norm(self.norm, same_conv(self.conv, x), train=train)
        return nnx.relu(x) if self.relu else x

    def pooled(
        self, x: jax.Array, window: int, stride: int, *, train: bool, padding: str = "VALID"
    ) -> jax.Array:
        """`max_pool(self(x), window, stride, padding=padding)`, with the ReLU after the pooling:
        max commutes with ReLU, so values and gradients are the same, and the ReLU and its
        gradient run over the pooled map (a quarter of the elements at 2 x 2). Non-overlapping
        windows in train mode on the CPU pool before BatchNorm normalises
        (`batch_norm_max_pool`); otherwise, after a single-channel conv, they pool as the max
        of the window's taps (`pooling.window_max`)."""
        tap_sum = conv_as_single_channel_slices(self.conv, x)
        x = same_conv(self.conv, x)
        disjoint = window == stride and padding == "VALID"
        if disjoint and cpu_train_path(self.norm, x, train=train):
            x = batch_norm_max_pool(self.norm, x, window)
        else:
            x = batch_norm(self.norm, x, train=train)
            x = max_pool(x, window, stride, padding=padding, taps=disjoint and tap_sum)
        return nnx.relu(x) if self.relu else x


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """XLA's (and TensorFlow's) "SAME" padding of one spatial axis: (low, high)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _runs_as_given(conv: nnx.Conv) -> bool:
    """Whether `same_conv` hands `conv` to `conv(x)` whatever its input: a padding, bias or
    dilation its fast paths do not cover, or the GPU/TPU branch."""
    plain = conv.padding != "SAME" or conv.use_bias or conv.kernel_dilation not in (1, None)
    return plain or not cpu_fast_paths()


def conv_as_single_channel_slices(conv: nnx.Conv, x: jax.Array) -> bool:
    """Whether `same_conv(conv, x)` computes a conv over one input channel as a sum of
    shifted slices (`_single_channel_conv`)."""
    return not _runs_as_given(conv) and conv.feature_group_count == x.shape[-1] == 1


def same_conv(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """`conv(x)` for a bias-free, "SAME"-padded 2-D `nnx.Conv` over NHWC `x`, in the form XLA
    runs fastest (benchmarks/NOTES.md): on maps smaller than the kernel (ResNet's last stages
    on small images) as patches times a matrix, since XLA:CPU's direct convolution is ~30x
    slower there; a depthwise conv as a sum of shifted, strided slices times the per-channel
    weights, since XLA:CPU's grouped convolution runs at ~2 % of its matmul peak; a conv over a
    single input channel (a spectrogram, a grayscale image) the same way in its forward pass
    (one fused loop: 0.8 against 7.0 ms for 1 -> 16 channels on [64, 101, 40]) with the
    direct conv's own gradient. Other convolutions, and every conv on GPU/TPU or inside
    `backend.accelerator_paths()`, go to `conv` itself. The results equal `conv(x)` to float
    rounding (tests/test_fast_conv.py)."""
    kernel = conv.kernel[...]
    (kh, kw), (sh, sw) = conv.kernel_size, conv.strides or (1, 1)
    if _runs_as_given(conv):
        return conv(x)
    (h_lo, h_hi), (w_lo, w_hi) = (
        _same_padding(x.shape[1], kh, sh),
        _same_padding(x.shape[2], kw, sw),
    )
    channels, padding = x.shape[-1], ((h_lo, h_hi), (w_lo, w_hi))
    if conv.feature_group_count == channels == kernel.shape[-1] and channels > 1:
        return _tap_sum(x, kernel, (sh, sw), padding)
    if conv_as_single_channel_slices(conv, x):
        x, kernel = promote_dtype((x, kernel), dtype=conv.dtype)
        return _single_channel_conv(x, kernel, (sh, sw), padding)
    if conv.feature_group_count == 1 and (x.shape[1] < kh or x.shape[2] < kw):
        patches = jax.lax.conv_general_dilated_patches(
            x,
            (kh, kw),
            (sh, sw),
            ((h_lo, h_hi), (w_lo, w_hi)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # [B, H', W', C * kh * kw], features ordered (C, kh, kw)
        weights = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(-1, kernel.shape[-1])
        return patches @ weights.astype(patches.dtype)
    return conv(x)


def _tap_sum(
    x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Padding
) -> jax.Array:
    """A conv whose kernel taps each read one input channel (depthwise, or a single input
    channel broadcast to every output one) as a sum of shifted, strided slices of x [B, H, W, C]
    times the taps' weights kernel [kh, kw, 1, C_out]: one loop XLA fuses."""
    (kh, kw), (sh, sw) = kernel.shape[:2], strides
    padded = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    out_h, out_w = (padded.shape[1] - kh) // sh + 1, (padded.shape[2] - kw) // sw + 1
    out = jnp.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]), x.dtype)
    for i, j in itertools.product(range(kh), range(kw)):
        window = padded[:, i : i + (out_h - 1) * sh + 1 : sh, j : j + (out_w - 1) * sw + 1 : sw]
        out = out + window * kernel[i, j, 0]
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _single_channel_conv(
    x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Padding
) -> jax.Array:
    """x [B, H, W, 1], kernel [kh, kw, 1, C] -> [B, H', W', C]: the forward pass as `_tap_sum`,
    the gradient as the direct conv's (differentiating the slices, XLA materialised every
    tap's product: 1.2x slower than the direct conv in the CNN-LSTM train step)."""
    return _tap_sum(x, kernel, strides, padding)


def _single_channel_conv_forward(x, kernel, strides, padding):
    return _tap_sum(x, kernel, strides, padding), (x, kernel)


def _single_channel_conv_backward(strides, padding, residuals, grad):
    def direct(x, kernel):
        return jax.lax.conv_general_dilated(
            x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    return jax.vjp(direct, *residuals)[1](grad)


_single_channel_conv.defvjp(_single_channel_conv_forward, _single_channel_conv_backward)


def max_pool(
    x: jax.Array, window: int, stride: int, *, padding: str = "VALID", taps: bool = False
) -> jax.Array:
    """`nnx.max_pool` over `window` x `window` patches of NHWC `x` [B, H, W, C], with a
    cheaper gradient on CPU (benchmarks/NOTES.md): XLA's select-and-scatter, the usual
    gradient, runs 3-10x slower there than this one, which stacks the window's strided
    slices, picks the first maximum of each (as select-and-scatter does) and sends the
    output's gradient to it. `taps` (stride = window, VALID only) pools on CPU as the
    elementwise max of the window's taps (`pooling.window_max`), for an `x` computed as a sum
    of shifted slices. GPU/TPU, and CPU inside `backend.accelerator_paths()`, keep XLA's own
    pooling and gradient."""
    if taps and (stride != window or padding != "VALID"):
        raise ValueError("max_pool: taps=True needs stride == window and VALID padding")
    if not cpu_fast_paths():
        return nnx.max_pool(x, (window, window), (stride, stride), padding=padding)
    return _max_pool(x, window, stride, padding, taps)


def _window_stack(x: jax.Array, window: int, stride: int, padding: str) -> jax.Array:
    """Every pooling window's elements, [B, H', W', C, window^2] (-inf where padded)."""
    if padding == "SAME":
        pads = (
            _same_padding(x.shape[1], window, stride),
            _same_padding(x.shape[2], window, stride),
        )
        x = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
    out_h = (x.shape[1] - window) // stride + 1
    out_w = (x.shape[2] - window) // stride + 1
    rows, cols = (out_h - 1) * stride + 1, (out_w - 1) * stride + 1
    return jnp.stack(
        [
            x[:, i : i + rows : stride, j : j + cols : stride]
            for i, j in itertools.product(range(window), range(window))
        ],
        axis=-1,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _max_pool(x: jax.Array, window: int, stride: int, padding: str, taps: bool) -> jax.Array:
    if taps:
        return window_max(x, window)
    return nnx.max_pool(x, (window, window), (stride, stride), padding=padding)


def _max_pool_forward(x, window, stride, padding, taps):
    return _max_pool(x, window, stride, padding, taps), x


def _max_pool_backward(window, stride, padding, taps, x, grad):
    windows, scatter_back = jax.vjp(lambda x: _window_stack(x, window, stride, padding), x)
    chosen = jnp.arange(window * window) == jnp.argmax(windows, axis=-1)[..., None]
    return scatter_back(jnp.where(chosen, grad[..., None], 0.0))


_max_pool.defvjp(_max_pool_forward, _max_pool_backward)


def sinusoidal_positions(length: int, dim: int) -> jax.Array:
    """Fixed sine/cosine position codes (Vaswani et al. 2017), [length, dim]."""
    position = jnp.arange(length, dtype=jnp.float32)[:, None]
    freq = jnp.exp(-jnp.log(10000.0) * jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    angles = position * freq[None, :]
    codes = jnp.zeros((length, dim), jnp.float32)
    codes = codes.at[:, 0::2].set(jnp.sin(angles))
    return codes.at[:, 1::2].set(jnp.cos(angles[:, : dim // 2]))


class TransformerBlock(nnx.Module):
    """Pre-norm self-attention + MLP block over tokens [B, T, D] with a key mask [B, T]."""

    def __init__(self, dim: int, heads: int, *, dropout: float = 0.0, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            heads, dim, dropout_rate=dropout, decode=False, rngs=rngs
        )
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.mlp = MLP((dim, 4 * dim, dim), dropout=dropout, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        attn_mask = nnx.make_attention_mask(mask, mask)
        x = x + self.attn(self.norm1(x), mask=attn_mask, deterministic=not train)
        return x + self.mlp(self.norm2(x), train=train)


def jit_init(factory: Callable[[], nnx.Module]) -> nnx.Module:
    """Build `factory()` as one compiled program: eager NNX init dispatches (and compiles)
    every initialiser separately, which takes tens of seconds for a large CNN on a CPU."""
    model = nnx.eval_shape(factory)
    fill_abstract(model, factory)  # every variable is abstract: one program initialises all
    return model


def fill_abstract(model: nnx.Module, factory: Callable[[], nnx.Module]) -> None:
    """Give the variables of `model` that are still abstract (`jax.ShapeDtypeStruct`, as
    `nnx.eval_shape` leaves them) the values `factory()` initialises them to, in place.

    For a model whose weights come from files: one compiled program computes only the rest
    (RNG state, say), as XLA drops every initialiser whose output is not asked for.
    """
    flat = nnx.to_flat_state(nnx.state(model))
    wanted = {path for path, v in flat if isinstance(v.get_value(), jax.ShapeDtypeStruct)}
    if not wanted:
        return

    def init() -> nnx.State:
        built = nnx.to_flat_state(nnx.state(factory()))
        return nnx.from_flat_state([(path, v) for path, v in built if path in wanted])

    nnx.update(model, jax.jit(init)())
