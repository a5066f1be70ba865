"""Registry-driven tests: every encoder, fusion and model gets shape, mask, jit and grad checks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mmjax
from mmjax.models.layers import Features
from mmjax.registry import ENCODERS, FUSIONS, MODELS

B = 2
# Test values for fields of any encoder Config: tiny sizes (DESIGN), every loss switched on.
TINY = {
    "width": 8,
    "hidden": 32,
    "dim": 32,
    "layers": 1,
    "depth": 1,
    "heads": 2,
    "intermediate": 64,
    "vocab_size": 1000,
    "reconstruction_weight": 1.0,  # so an autoencoder's decoder has something to learn from
}


def tiny_config(cls):
    """`cls.Config()` with every field that TINY names set to its test value."""
    names = {f.name for f in dataclasses.fields(cls.Config)}
    return cls.Config(**{k: v for k, v in TINY.items() if k in names})


def sample_input(encoder_cls, cfg) -> jax.Array:
    """A small random input of the kind `encoder_cls` takes."""
    rng = np.random.default_rng(0)
    if encoder_cls.modality == "image":
        return jnp.asarray(rng.random((B, 32, 32, cfg.in_channels), np.float32))
    if encoder_cls.modality == "audio":
        return jnp.asarray(rng.standard_normal((B, 4000), np.float32))
    if encoder_cls.modality == "video":
        return jnp.asarray(rng.random((B, 4, 32, 32, cfg.in_channels), np.float32))
    if encoder_cls.modality == "text":
        ids = rng.integers(1, cfg.vocab_size, (B, 8))
        ids[0, 5:] = 0  # padding
        return jnp.asarray(ids, jnp.int32)
    raise AssertionError(f"no sample input for modality {encoder_cls.modality!r}")


def _shapes(state: nnx.State) -> list[tuple[tuple[int, ...], jnp.dtype]]:
    return [(x.shape, x.dtype) for x in jax.tree.leaves(state)]


@pytest.mark.parametrize("name", ENCODERS.names())
def test_encoder_contract(name):
    cls = ENCODERS.get(name)
    cfg = tiny_config(cls)
    # Built eagerly: its initialisers' small programs are compiled once for all the encoders of
    # this file (a jit_init program per encoder took twice as long). That the constructor also
    # traces, as jit_init and the trainer's init_state need, eval_shape checks.
    abstract = nnx.state(nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0))))
    encoder = cls(cfg, rngs=nnx.Rngs(0))
    assert _shapes(abstract) == _shapes(nnx.state(encoder))
    x = sample_input(cls, cfg)
    graphdef, params, rest = nnx.split(encoder, nnx.Param, ...)
    traces = []

    @jax.jit
    def forward(params, rest, x):
        traces.append(1)
        return nnx.merge(graphdef, params, rest)(x, train=False)

    @jax.jit
    def grads(params, rest, x):
        # A random projection, not a plain sum: the sum of a LayerNorm output is constant.
        def loss(m):
            out = m(x, train=True)
            weights = jax.random.normal(jax.random.key(1), out.pooled.shape)
            total = jnp.sum(out.pooled * weights) + jnp.sum(jnp.square(out.tokens))
            return total + sum(getattr(m, "aux_loss", lambda *_, **__: {})(x, train=True).values())

        return nnx.grad(loss)(nnx.merge(graphdef, params, rest))

    features = forward(params, rest, x)
    assert isinstance(features, Features)
    tokens, token_mask, pooled = features
    assert tokens.ndim == 3 and tokens.shape[0] == B and tokens.shape[2] == encoder.dim
    assert token_mask.shape == tokens.shape[:2] and token_mask.dtype == jnp.bool_
    assert pooled.shape == (B, encoder.dim)
    assert np.isfinite(np.asarray(tokens)).all()
    for _ in range(2):
        forward(params, rest, x)
    assert len(traces) == 1
    flat = nnx.to_flat_state(nnx.state(grads(params, rest, x), nnx.Param))
    stuck = [
        "/".join(map(str, path))
        for path, g in flat
        if not (np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0)
    ]
    assert flat and not stuck, f"parameters with zero or non-finite gradients: {stuck}"


def test_text_padding_is_masked():
    cls = ENCODERS.get("bilstm")
    encoder = cls(cls.Config(vocab_size=50), rngs=nnx.Rngs(0))
    ids = jnp.asarray([[5, 6, 7, 0, 0], [5, 6, 7, 9, 9]])
    features = encoder(ids, train=False)
    assert features.token_mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    padded = encoder(jnp.asarray([[5, 6, 7, 0, 0, 0, 0]]), train=False).pooled
    np.testing.assert_allclose(padded[0], features.pooled[0], atol=1e-5)


def _features(dims: dict[str, int], seed: int) -> dict[str, Features]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, (m, d) in enumerate(sorted(dims.items())):
        tokens = jnp.asarray(rng.standard_normal((B, 3 + i, d), np.float32))
        mask = jnp.ones((B, 3 + i), bool).at[1, -1].set(False)
        out[m] = Features(tokens, mask, tokens.mean(1))
    return out


@pytest.mark.parametrize("name", FUSIONS.names())
@pytest.mark.parametrize("dims", [{"image": 16, "audio": 24}, {"text": 8}])
def test_fusion_contract(name, dims):
    cls = FUSIONS.get(name)
    fusion = cls(dims, cls.Config(), rngs=nnx.Rngs(0))
    features = _features(dims, 0)
    all_present = {m: jnp.ones((B,), bool) for m in dims}
    # Jitted: run op by op, a deep head (MBT) compiled hundreds of small programs.
    out = nnx.jit(lambda f: f(features, all_present, train=False))(fusion)
    assert out.shape == (B, fusion.dim)
    assert np.isfinite(np.asarray(out)).all()
    grads = nnx.jit(nnx.grad(lambda f: f(features, all_present, train=True).sum()))(fusion)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("name", FUSIONS.names())
def test_fusion_ignores_masked_modality(name):
    """A modality masked out for a sample cannot influence that sample's output."""
    dims = {"image": 16, "audio": 24}
    cls = FUSIONS.get(name)
    fusion = cls(dims, cls.Config(), rngs=nnx.Rngs(0))
    masks = {"image": jnp.array([True, True]), "audio": jnp.array([False, True])}
    a, b = _features(dims, 0), _features(dims, 1)
    b["image"] = a["image"]  # only audio differs
    forward = nnx.jit(lambda f, features: f(features, masks, train=False))
    out_a, out_b = forward(fusion, a), forward(fusion, b)
    np.testing.assert_allclose(out_a[0], out_b[0], atol=1e-5)  # audio missing: same output
    assert not np.allclose(out_a[1], out_b[1], atol=1e-5)  # audio present: it matters


@pytest.mark.parametrize("name", MODELS.names())
def test_model_forward_and_missing_modality(name):
    graphdef, state = nnx.split(mmjax.create_model(name))
    apply = jax.jit(lambda state, batch: nnx.merge(graphdef, state)(batch, train=False))
    section = MODELS.get(name)()
    batch = {}
    for m, spec in section["encoders"].items():
        cls = ENCODERS.get(spec["name"])
        fields = {k: v for k, v in spec.items() if k != "name"}
        batch[m] = sample_input(cls, cls.Config(**fields))
    first = sorted(batch)[0]
    # The full batch with its first modality's mask, all present: the same keys, so the same
    # program, as the masked batch below (each program is seconds of compiling). The batch
    # without that modality, and without mask keys, runs every other row as present.
    present = {f"{first}_mask": jnp.array([True, True])} if len(batch) > 1 else {}
    logits = apply(state, dict(batch, **present))
    assert logits.shape == (B, section["num_classes"])
    if len(batch) > 1:
        masked = dict(batch, **{f"{first}_mask": jnp.array([False, True])})
        dropped = {k: v for k, v in batch.items() if k != first}
        np.testing.assert_allclose(apply(state, masked)[0], apply(state, dropped)[0], atol=1e-5)
