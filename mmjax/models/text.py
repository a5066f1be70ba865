"""Text encoders: token ids [B, L] int and their attention mask [B, L] bool -> Features.

The mask is the tokenizer's own (`mmjax.pretrained.load.tokenize`, the `<m>.attention_mask`
batch key); without one the encoders take id 0 for padding, which misreads a text holding
the literal token of id 0 (MiniLM's "[PAD]").
"""

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from mmjax.batch_keys import attention_key
from mmjax.errors import ConfigError, DataError, InputError
from mmjax.models.layers import Features, features_from_tokens
from mmjax.models.recurrent import run_bidirectional
from mmjax.registry import ENCODERS

# ----------------------------------------------------------------------------------------------
# Pretrained word vectors (GloVe / word2vec text format)


def _read_lines(path: Path, field: str) -> list[str]:
    """The lines of a UTF-8 text file, or a ConfigError naming `field` and the file."""
    if not path.is_file():
        raise ConfigError(f"config key {field!r}: file {str(path)!r} does not exist")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from None


def load_vocab(path: str | Path) -> list[str]:
    """A vocabulary file: one token per line, line index = token id (line 0 is padding)."""
    return _read_lines(Path(path), "vocab")


def load_word_vectors(path: str | Path, vocab: Sequence[str]) -> np.ndarray:
    """Vectors for `vocab` from a GloVe or word2vec text file: float32 [len(vocab), D].

    Each line of the file is ``word v1 ... vD``; a word2vec header line ``N D`` is skipped.
    A vocab word takes the vector of the same word in the file, else (case-insensitive fallback)
    of the first file word equal to it once lower-cased. Rows of words found in neither way are
    NaN, for the caller to fill. A missing file is a ConfigError; a line with the wrong number of
    fields or a non-numeric value is a DataError naming the file and line number.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config key 'embeddings': file {str(path)!r} does not exist")
    wanted = set(vocab)
    wanted_lower = {w.lower() for w in vocab}
    exact: dict[str, np.ndarray] = {}
    folded: dict[str, np.ndarray] = {}
    dim = None
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                parts = raw.decode("utf-8").split()
            except UnicodeDecodeError:
                raise DataError(f"{path}, line {lineno}: not UTF-8 text") from None
            if not parts:
                continue
            if lineno == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                dim = int(parts[1])  # word2vec header: "<count> <dim>"
                continue
            if dim is None:
                dim = len(parts) - 1
            if dim < 1 or len(parts) < dim + 1:
                raise DataError(
                    f"{path}, line {lineno}: expected a word and {max(dim, 1)} numbers, "
                    f"got {len(parts)} fields"
                )
            word = " ".join(parts[:-dim])  # a few GloVe tokens contain spaces
            lower = word.lower()
            if word not in wanted and lower not in wanted_lower:
                continue
            try:
                vector = np.asarray(parts[-dim:], dtype=np.float32)
            except ValueError:
                raise DataError(f"{path}, line {lineno}: non-numeric vector value") from None
            if word in wanted:
                exact.setdefault(word, vector)
            folded.setdefault(lower, vector)
    if dim is None:
        raise DataError(f"{path}: no word vectors in the file")
    table = np.full((len(vocab), dim), np.nan, np.float32)
    for i, word in enumerate(vocab):
        vector = exact.get(word)
        if vector is None:
            vector = folded.get(word.lower())
        if vector is not None:
            table[i] = vector
    return table


class FrozenEmbedding(nnx.Variable):
    """An embedding table kept fixed: not an nnx.Param, so optimizers (wrt=nnx.Param) skip it."""


def _pretrained_table(cfg: "RNNTextFields", name: str, rngs: nnx.Rngs) -> jax.Array:
    """The [vocab_size, embed_dim] table initialised from `cfg.embeddings` and `cfg.vocab`."""
    if not cfg.vocab:
        raise ConfigError(
            f"encoder {name!r}: config key 'embeddings' needs 'vocab' (a file of one token per "
            "line, line index = token id) to map the vectors to token ids"
        )
    vocab = load_vocab(cfg.vocab)
    if len(vocab) > cfg.vocab_size:
        raise ConfigError(
            f"encoder {name!r}: vocab file {cfg.vocab!r} has {len(vocab)} tokens but "
            f"vocab_size is {cfg.vocab_size}"
        )
    vectors = load_word_vectors(cfg.embeddings, vocab)
    if vectors.shape[1] != cfg.embed_dim:
        raise ConfigError(
            f"encoder {name!r}: config key 'embeddings' ({cfg.embeddings!r}) has "
            f"{vectors.shape[1]}-dimensional vectors but embed_dim is {cfg.embed_dim}"
        )
    found = np.zeros(cfg.vocab_size, bool)
    found[: len(vocab)] = ~np.isnan(vectors).any(axis=1)
    known = np.zeros((cfg.vocab_size, cfg.embed_dim), np.float32)
    known[: len(vocab)] = np.nan_to_num(vectors)
    scale = float(known[found].std()) if found.any() else 0.1
    # jnp, not np: the model is also built under jit / eval_shape, where the key is a tracer.
    random = scale * jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.embed_dim))
    table = jnp.where(found[:, None], known, random)  # ids without a vector: small random rows
    return table.at[0].set(0.0)  # padding


# ----------------------------------------------------------------------------------------------
# Attention masks


def token_mask(ids: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Which positions of ids [B, L] are real tokens: `mask` [B, L] bool when given, else the
    fallback for bare id arrays, `ids != 0` (id 0 taken for padding)."""
    if mask is None:
        return ids != 0
    if tuple(mask.shape) != tuple(ids.shape) or mask.dtype != jnp.bool_:
        raise InputError(
            f"{attention_key('text')}: expected a bool array of the ids' shape "
            f"{tuple(ids.shape)}, got {mask.dtype} {tuple(mask.shape)}"
        )
    return mask


# ----------------------------------------------------------------------------------------------
# Bidirectional recurrent encoders


@dataclasses.dataclass(frozen=True)
class RNNTextFields:
    """Settings shared by the bidirectional recurrent text encoders' Configs."""

    vocab_size: int = 10000
    embed_dim: int = 64
    hidden: int = 64
    embeddings: str = ""  # GloVe / word2vec text file initialising the embedding table
    vocab: str = ""  # one token per line, line index = token id; needed with `embeddings`
    freeze_embeddings: bool = False  # keep the (pretrained) table fixed during training


class BiRNNText(nnx.Module):
    """Token embedding -> bidirectional RNN of `cell`; padding (the attention mask's False
    positions, else id 0) is masked out.

    Subclasses pick the recurrent cell (flax's, run by `models/recurrent.py`) and the
    registered name; the backward direction reads each row reversed within its length, so
    padding never enters a real step's state, and the pooled mean skips the padded steps.
    """

    modality = "text"
    name: ClassVar[str]
    cell: ClassVar[type[nnx.RNNCellBase]]

    def __init__(self, cfg: RNNTextFields, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(cfg.vocab_size, cfg.embed_dim, rngs=rngs)
        if cfg.embeddings:
            table = _pretrained_table(cfg, self.name, rngs)
            variable = FrozenEmbedding if cfg.freeze_embeddings else nnx.Param
            self.embed.embedding = variable(table)
        self.freeze = cfg.freeze_embeddings
        self.rnn = nnx.Bidirectional(
            nnx.RNN(self.cell(cfg.embed_dim, cfg.hidden, rngs=rngs)),
            nnx.RNN(self.cell(cfg.embed_dim, cfg.hidden, rngs=rngs)),
        )
        self.dim = 2 * cfg.hidden

    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> Features:
        """ids x [B, L] int and `mask` [B, L] bool (True on real tokens, a prefix of each row,
        as a right-padding tokenizer makes it) -> Features: tokens [B, L, 2*hidden].

        Without `mask` (callers passing bare id arrays) the real tokens are `x != 0`.
        """
        mask = token_mask(x, mask)
        lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
        embedded = self.embed(x)
        if self.freeze:
            embedded = jax.lax.stop_gradient(embedded)
        tokens = run_bidirectional(self.rnn, embedded, lengths)
        return features_from_tokens(tokens, mask)


@ENCODERS.register("bilstm")
class BiLSTM(BiRNNText):
    """Token embedding -> bidirectional LSTM (Hochreiter & Schmidhuber 1997); padding masked."""

    name = "bilstm"
    cell = nnx.OptimizedLSTMCell

    @dataclasses.dataclass(frozen=True)
    class Config(RNNTextFields):
        pass


@ENCODERS.register("bigru")
class BiGRU(BiRNNText):
    """Token embedding -> bidirectional GRU (Cho et al. 2014); padding masked."""

    name = "bigru"
    cell = nnx.GRUCell

    @dataclasses.dataclass(frozen=True)
    class Config(RNNTextFields):
        pass


# ----------------------------------------------------------------------------------------------
# BERT-layout Transformer encoder

_LN_EPS = 1e-12  # BERT's layer_norm_eps, used by every LayerNorm
_init = nnx.initializers.normal(0.02)  # BERT's initializer_range


def _linear(d_in: int, d_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, kernel_init=_init, rngs=rngs)


def _norm(dim: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(dim, epsilon=_LN_EPS, rngs=rngs)


class BertEmbeddings(nnx.Module):
    """Word + learned position + token-type (all type 0) embeddings -> LayerNorm -> dropout."""

    def __init__(self, cfg: "TextTransformer.Config", *, rngs: nnx.Rngs):
        self.word = nnx.Embed(cfg.vocab_size, cfg.hidden, embedding_init=_init, rngs=rngs)
        self.position = nnx.Embed(cfg.max_len, cfg.hidden, embedding_init=_init, rngs=rngs)
        self.token_type = nnx.Embed(
            cfg.type_vocab_size, cfg.hidden, embedding_init=_init, rngs=rngs
        )
        self.norm = _norm(cfg.hidden, rngs)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, ids: jax.Array, *, train: bool) -> jax.Array:
        positions = jnp.arange(ids.shape[1])[None, :]
        x = self.word(ids) + self.position(positions) + self.token_type(jnp.zeros_like(ids))
        return self.dropout(self.norm(x), deterministic=not train)


class BertSelfAttention(nnx.Module):
    """Multi-head self-attention with BERT's query/key/value/output Linears (with bias)."""

    def __init__(self, hidden: int, heads: int, dropout: float, *, rngs: nnx.Rngs):
        if hidden % heads:
            raise ConfigError(f"text_transformer: hidden ({hidden}) must divide by heads ({heads})")
        self.heads = heads
        self.query = _linear(hidden, hidden, rngs)
        self.key = _linear(hidden, hidden, rngs)
        self.value = _linear(hidden, hidden, rngs)
        self.output = _linear(hidden, hidden, rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        q, k, v = (
            rearrange(proj(x), "b l (h d) -> b h l d", h=self.heads)
            for proj in (self.query, self.key, self.value)
        )
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])
        scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
        probs = self.dropout(jax.nn.softmax(scores, axis=-1), deterministic=not train)
        context = rearrange(jnp.einsum("bhqk,bhkd->bhqd", probs, v), "b h l d -> b l (h d)")
        return self.output(context)


class BertLayer(nnx.Module):
    """Post-norm encoder layer: attention -> add & norm -> Dense+GELU -> Dense -> add & norm."""

    def __init__(self, cfg: "TextTransformer.Config", *, rngs: nnx.Rngs):
        self.attention = BertSelfAttention(cfg.hidden, cfg.heads, cfg.dropout, rngs=rngs)
        self.attention_norm = _norm(cfg.hidden, rngs)
        self.intermediate = _linear(cfg.hidden, cfg.intermediate, rngs)
        self.output = _linear(cfg.intermediate, cfg.hidden, rngs)
        self.output_norm = _norm(cfg.hidden, rngs)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        attended = self.dropout(self.attention(x, mask, train=train), deterministic=not train)
        x = self.attention_norm(x + attended)
        hidden = jax.nn.gelu(self.intermediate(x), approximate=False)
        out = self.dropout(self.output(hidden), deterministic=not train)
        return self.output_norm(x + out)


@ENCODERS.register("text_transformer")
class TextTransformer(nnx.Module):
    """BERT-layout Transformer encoder (Devlin et al. 2019); pooled = masked token mean.

    Submodule names mirror BERT's (``embeddings.word``, ``layers[i].attention.query``, ...) so
    pretrained BERT / MiniLM weights map one-to-one (BERT's pooler is not included). The
    defaults are MiniLM-L6's sizes; the pooled vector is the mean over the attention mask's
    tokens, as sentence-transformers does for all-MiniLM-L6-v2.
    """

    modality = "text"

    @dataclasses.dataclass(frozen=True)
    class Config:
        vocab_size: int = 30522
        hidden: int = 384
        layers: int = 6
        heads: int = 12
        intermediate: int = 1536
        max_len: int = 512
        type_vocab_size: int = 2
        dropout: float = 0.1

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        self.max_len = cfg.max_len
        self.embeddings = BertEmbeddings(cfg, rngs=rngs)
        self.layers = nnx.List([BertLayer(cfg, rngs=rngs) for _ in range(cfg.layers)])
        self.dim = cfg.hidden

    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> Features:
        """ids x [B, L] int and `mask` [B, L] bool (True on real tokens) -> Features: tokens
        [B, L, hidden], token_mask = mask, pooled = the mean of the masked tokens [B, hidden].

        Without `mask` (callers passing bare id arrays) the real tokens are `x != 0`.
        """
        if x.ndim != 2 or x.shape[1] > self.max_len:
            raise InputError(
                f"text: expected token ids [B, L] with L <= max_len ({self.max_len}), "
                f"got shape {tuple(x.shape)}"
            )
        mask = token_mask(x, mask)
        tokens = self.embeddings(x, train=train)
        for layer in self.layers:
            tokens = layer(tokens, mask, train=train)
        return features_from_tokens(tokens, mask)
