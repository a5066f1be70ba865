"""Text, audio and video encoders beyond the registry contract: word vectors, BERT layout,
the log-mel autoencoder's objective, AST input lengths and the video temporal models."""

import glob

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import mmjax.models  # noqa: F401  (registration)
from mmjax.data.audio_io import prepare_waveform, read_wav
from mmjax.errors import ConfigError, DataError
from mmjax.models.audio import reconstruction_loss
from mmjax.models.text import load_word_vectors
from mmjax.registry import ENCODERS

VOCAB = ["<pad>", "the", "Cat", "dog", "zebra"]  # "Cat" matches "cat" case-insensitively
VECTORS = {
    "the": [0.1, 0.2, 0.3, 0.4],
    "cat": [1.0, -1.0, 0.5, 0.25],
    "dog": [-0.5, 0.5, 2.0, 1.5],
    "other": [9.0, 9.0, 9.0, 9.0],
}


def _write_vectors(tmp_path, *, header: bool = False, dim: int = 4):
    lines = [f"{w} " + " ".join(str(v) for v in vec[:dim]) for w, vec in VECTORS.items()]
    if header:
        lines.insert(0, f"{len(VECTORS)} {dim}")
    vectors = tmp_path / ("vectors.w2v.txt" if header else "glove.txt")
    vectors.write_text("\n".join(lines) + "\n")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    return str(vectors), str(vocab)


def _text_encoder(name, **fields):
    cls = ENCODERS.get(name)
    return cls(cls.Config(vocab_size=8, embed_dim=4, hidden=8, **fields), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("header", [False, True], ids=["glove", "word2vec"])
def test_load_word_vectors(tmp_path, header):
    vectors, _ = _write_vectors(tmp_path, header=header)
    table = load_word_vectors(vectors, VOCAB)
    assert table.shape == (5, 4)
    for i, word in [(1, "the"), (2, "cat"), (3, "dog")]:
        np.testing.assert_allclose(table[i], VECTORS[word])
    assert np.isnan(table[0]).all() and np.isnan(table[4]).all()  # "<pad>" and "zebra": absent


@pytest.mark.parametrize("name", ["bilstm", "bigru"])
def test_pretrained_embeddings_initialise_the_table(tmp_path, name):
    vectors, vocab = _write_vectors(tmp_path, header=name == "bigru")
    encoder = _text_encoder(name, embeddings=vectors, vocab=vocab)
    table = np.asarray(encoder.embed.embedding[...])
    assert table.shape == (8, 4)
    np.testing.assert_array_equal(table[0], 0.0)  # padding
    np.testing.assert_allclose(table[1:4], [VECTORS[w] for w in ("the", "cat", "dog")])
    assert np.isfinite(table).all() and np.abs(table[4:]).sum() > 0  # missing / unused: random
    # The trainer builds models under jit (and eval_shape): the file-backed table must trace.
    state = jax.jit(lambda: nnx.split(_text_encoder(name, embeddings=vectors, vocab=vocab))[1])()
    np.testing.assert_allclose(state["embed"]["embedding"][...], table)
    features = encoder(jnp.asarray([[1, 2, 3, 0]]), train=False)
    assert np.isfinite(np.asarray(features.pooled)).all()


def test_embedding_dim_mismatch_is_a_config_error(tmp_path):
    vectors, vocab = _write_vectors(tmp_path, dim=3)
    with pytest.raises(ConfigError, match=r"embeddings.*glove\.txt.*3-dim.*embed_dim is 4"):
        _text_encoder("bilstm", embeddings=vectors, vocab=vocab)


def test_bad_vector_files(tmp_path):
    vectors, vocab = _write_vectors(tmp_path)
    with pytest.raises(ConfigError, match=r"missing\.txt"):
        _text_encoder("bilstm", embeddings=str(tmp_path / "missing.txt"), vocab=vocab)
    with pytest.raises(ConfigError, match="vocab"):
        _text_encoder("bilstm", embeddings=vectors)
    bad = tmp_path / "bad.txt"
    bad.write_text("the 0.1 0.2\ncat 0.3 oops\n")
    with pytest.raises(DataError, match=r"bad\.txt, line 2"):
        load_word_vectors(bad, ["<pad>", "cat"])
    bad.write_text("the 0.1 0.2\ncat 0.3\n")
    with pytest.raises(DataError, match=r"bad\.txt, line 2"):
        load_word_vectors(bad, ["<pad>", "cat"])


@pytest.mark.parametrize("freeze", [True, False], ids=["frozen", "trainable"])
def test_frozen_embeddings_stay_fixed(tmp_path, freeze):
    vectors, vocab = _write_vectors(tmp_path)
    encoder = _text_encoder("bigru", embeddings=vectors, vocab=vocab, freeze_embeddings=freeze)
    before = np.asarray(encoder.embed.embedding[...]).copy()
    rnn_before = jax.tree.map(np.array, nnx.state(encoder.rnn, nnx.Param))
    # AdamW's weight decay would move even a zero-gradient Param: frozen tables are no Param.
    optimizer = nnx.Optimizer(encoder, optax.adamw(1e-2, weight_decay=0.1), wrt=nnx.Param)
    ids = jnp.asarray([[1, 2, 3, 4], [3, 2, 0, 0]])
    grads = nnx.grad(lambda m: jnp.sum(m(ids, train=True).pooled ** 2))(encoder)
    optimizer.update(encoder, grads)
    after = np.asarray(encoder.embed.embedding[...])
    if freeze:
        np.testing.assert_array_equal(after, before)
    else:
        assert not np.allclose(after, before)
    rnn_after = jax.tree.leaves(nnx.state(encoder.rnn, nnx.Param))
    assert all(not np.allclose(a, b) for a, b in zip(rnn_after, jax.tree.leaves(rnn_before)))


def _bert_parameter_count(
    vocab_size, hidden, layers, intermediate, max_len, type_vocab_size=2, **_
) -> int:
    """BERT's encoder (no pooler): embeddings + LayerNorm, then per layer q/k/v/o + 2 FFN + 2 LN."""
    embeddings = (vocab_size + max_len + type_vocab_size) * hidden + 2 * hidden
    attention = 4 * (hidden * hidden + hidden) + 2 * hidden
    ffn = (hidden * intermediate + intermediate) + (intermediate * hidden + hidden) + 2 * hidden
    return embeddings + layers * (attention + ffn)


def test_text_transformer_has_bert_layout():
    cls = ENCODERS.get("text_transformer")
    cfg = cls.Config()
    encoder = cls(cfg, rngs=nnx.Rngs(0))
    params = nnx.state(encoder, nnx.Param)
    count = sum(x.size for x in jax.tree.leaves(params))
    pooler = cfg.hidden * cfg.hidden + cfg.hidden
    assert count == _bert_parameter_count(**vars(cfg)) == 22_713_216 - pooler == 22_565_376
    paths = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(params)}
    for name in [
        "embeddings.word.embedding",
        "embeddings.position.embedding",
        "embeddings.token_type.embedding",
        "embeddings.norm.scale",
        "layers.5.attention.query.kernel",
        "layers.5.attention.output.bias",
        "layers.0.attention_norm.scale",
        "layers.0.intermediate.kernel",
        "layers.0.output.kernel",
        "layers.0.output_norm.bias",
    ]:
        assert name in paths
    ids = jnp.asarray([[101, 2023, 102, 0, 0], [101, 2023, 2003, 1037, 102]])
    features = encoder(ids, train=False)
    assert features.token_mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    padded = encoder(jnp.asarray([[101, 2023, 102, 0, 0, 0, 0]]), train=False).pooled
    np.testing.assert_allclose(padded[0], features.pooled[0], atol=1e-5)


def test_conv_autoencoder_reconstruction_improves():
    files = sorted(glob.glob("/usr/share/asterisk/sounds/en/digits/*.wav"))
    if not files:
        pytest.skip("no asterisk digit recordings on this machine")
    waves = [prepare_waveform(*read_wav(f), sample_rate=8000, length=8000) for f in files[:2]]
    x = jnp.asarray(np.stack(waves))
    cls = ENCODERS.get("conv_autoencoder")
    encoder = cls(cls.Config(), rngs=nnx.Rngs(0))
    reconstruction, target = encoder.reconstruct(x, train=False)
    assert reconstruction.shape == target.shape == (2, 101, 40)
    optimizer = nnx.Optimizer(encoder, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(encoder, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: reconstruction_loss(m, x, train=True))(encoder)
        optimizer.update(encoder, grads)
        return loss

    losses = [float(step(encoder, optimizer)) for _ in range(30)]
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.7 * losses[0], losses


def test_ast_resamples_positions_to_the_input_length():
    cls = ENCODERS.get("ast")
    cfg = cls.Config(dim=32, depth=1, heads=2)
    encoder = cls(cfg, rngs=nnx.Rngs(0))
    assert encoder.position.shape == (7, 3, 32)  # 101 frames x 40 mels, 16x16 patches
    rng = np.random.default_rng(0)
    for samples, grid in [(4000, 4 * 3), (16000, 13 * 3)]:  # fewer / more frames than 101
        features = encoder(jnp.asarray(rng.standard_normal((2, samples), np.float32)), train=False)
        assert features.tokens.shape == (2, grid, 32)
        assert features.pooled.shape == (2, 32)
        assert np.isfinite(np.asarray(features.tokens)).all()


@pytest.mark.parametrize("temporal", ["mean", "lstm", "transformer"])
def test_video_temporal_models(temporal):
    cls = ENCODERS.get("video")
    encoder = cls(cls.Config(temporal=temporal, hidden=16, heads=2, depth=1), rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).random((2, 3, 16, 16, 3), np.float32))
    features = encoder(x, train=False)
    assert features.tokens.shape == (2, 3, encoder.dim)
    assert encoder.dim == (64 if temporal == "mean" else 16)
    assert np.isfinite(np.asarray(features.pooled)).all()
    grads = nnx.grad(lambda m: m(x, train=True).pooled.sum())(encoder)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_video_rejects_unknown_choices():
    cls = ENCODERS.get("video")
    with pytest.raises(ConfigError, match=r"video\.temporal.*'mean', 'lstm', 'transformer'"):
        cls(cls.Config(temporal="gru"), rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match=r"video\.frame_encoder"):
        cls(cls.Config(frame_encoder="bilstm"), rngs=nnx.Rngs(0))
