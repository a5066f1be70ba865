"""Text encoders: token ids [B, L] int (0 = padding) -> Features."""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.models.layers import Features, features_from_tokens
from mmjax.registry import ENCODERS


@ENCODERS.register("bilstm")
class BiLSTM(nnx.Module):
    """Token embedding -> bidirectional LSTM; padding (id 0) is masked out of the pooled vector."""

    modality = "text"

    @dataclasses.dataclass(frozen=True)
    class Config:
        vocab_size: int = 10000
        embed_dim: int = 64
        hidden: int = 64

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(cfg.vocab_size, cfg.embed_dim, rngs=rngs)
        self.rnn = nnx.Bidirectional(
            nnx.RNN(nnx.OptimizedLSTMCell(cfg.embed_dim, cfg.hidden, rngs=rngs)),
            nnx.RNN(nnx.OptimizedLSTMCell(cfg.embed_dim, cfg.hidden, rngs=rngs)),
        )
        self.dim = 2 * cfg.hidden

    def __call__(self, x: jax.Array, *, train: bool) -> Features:
        mask = x != 0
        lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
        tokens = self.rnn(self.embed(x), seq_lengths=lengths)
        return features_from_tokens(tokens, mask)
