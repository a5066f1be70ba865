"""Build catalog encoders with their published weights; tokenise text for them."""

from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.config import ModelConfig
from mmjax.errors import ConfigError, DataError
from mmjax.models import MultimodalModel
from mmjax.models.layers import Features, fill_abstract
from mmjax.pretrained.assign import TrackedWeights, assign
from mmjax.pretrained.catalog import PretrainedEncoder, entry, package_dir, weight_file
from mmjax.registry import ENCODERS


def place(encoder: nnx.Module, spec: PretrainedEncoder) -> None:
    """Overwrite `encoder`'s parameters with the published weights of `spec`, in place."""
    path = weight_file(spec)
    weights = TrackedWeights(spec.read(path), str(path))
    table = spec.table(weights)
    assign(encoder, table, source=str(path), unused=weights.unread(spec.ignored))


def place_encoder(encoder: nnx.Module, spec: PretrainedEncoder) -> None:
    """`place` into a model's encoder: a video encoder's weights go to its frame encoder."""
    place(encoder.frames if encoder.modality == "video" else encoder, spec)


def place_pretrained(model: MultimodalModel, cfg: ModelConfig) -> None:
    """Put the published weights named by `cfg.pretrained` into `model`'s encoders."""
    for modality, name in cfg.pretrained:
        place_encoder(model.encoders[modality], entry(name))


def load_encoder(name: str) -> nnx.Module:
    """The catalog encoder `name` (see `mmjax.pretrained.CATALOG`) with its weights."""
    spec = entry(name)
    cls = ENCODERS.get(spec.encoder)
    factory = lambda: cls(cls.Config(**spec.config), rngs=nnx.Rngs(0))
    encoder = nnx.eval_shape(factory)  # the file gives the weights: initialise only the rest
    place(encoder, spec)
    fill_abstract(encoder, factory)
    return encoder


def load_classifier(name: str) -> nnx.Linear:
    """The published classification layer of catalog encoder `name` (e.g. EfficientNet-Lite0's
    ImageNet-1k head): pooled features [B, D] -> logits [B, classes]."""
    spec = entry(name)
    if not spec.classifier:
        raise ConfigError(f"pretrained {name!r} publishes no classifier")
    path = weight_file(spec)
    weights = spec.read(path)
    kernel, bias = (weights[n] for n in spec.classifier)
    layer = nnx.Linear(kernel.shape[1], kernel.shape[0], rngs=nnx.Rngs(0))
    assign(layer, {("kernel",): kernel.T, ("bias",): bias}, source=str(path))
    return layer


def _catalog_tokenizer(name: str) -> tuple[Any, Any]:
    """(tokenizers.Tokenizer, catalog entry) of the catalog text encoder `name`."""
    from tokenizers import Tokenizer

    spec = entry(name)
    if not spec.tokenizer:
        raise ConfigError(f"pretrained {name!r} is not a text encoder; it has no tokenizer")
    path = package_dir(spec) / spec.tokenizer
    if not path.is_file():
        raise DataError(f"{spec.package} has no {spec.tokenizer}; {spec.install_line()}")
    return Tokenizer.from_file(str(path)), spec


def tokenize(
    name: str, texts: list[str], *, length: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [N, L], attention_mask bool [N, L]) for a catalog text encoder: padded with
    id 0 to the longest text (or to `length`, which keeps one compiled shape) and truncated as
    its reference does. The mask is the tokenizer's own (True on real tokens), so a text that
    holds the literal padding token (MiniLM's "[PAD]", id 0) keeps it; pass it to the encoder
    as `mask=` (batch key `text.attention_mask`)."""
    tokenizer, spec = _catalog_tokenizer(name)
    limit = min(spec.max_tokens, length) if length else spec.max_tokens
    tokenizer.enable_truncation(limit)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=length)
    encodings = tokenizer.encode_batch(list(texts))
    ids = np.asarray([e.ids for e in encodings], np.int32)
    mask = np.asarray([e.attention_mask for e in encodings], bool)
    return ids, mask


def decode_tokens(name: str, ids: list[list[int]]) -> list[str]:
    """The texts of token id lists for a catalog text encoder, without its special tokens."""
    tokenizer, _ = _catalog_tokenizer(name)
    return tokenizer.decode_batch(ids, skip_special_tokens=True)


def sentence_embedding(features: Features) -> jnp.ndarray:
    """Unit-length sentence vectors [N, D] from a text encoder's mean-pooled Features, as
    all-MiniLM-L6-v2's Normalize module makes them."""
    pooled = features.pooled
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
