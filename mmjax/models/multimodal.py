"""MultimodalModel: {modality: encoder} + fusion head + classifier, with missing-modality masks."""

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mmjax.batch_keys import attention_key, cached_keys
from mmjax.config import ModelConfig
from mmjax.errors import ConfigError, InputError, MmjaxError
from mmjax.models.alignment import ModalityDiscriminator
from mmjax.models.heads import Classifier
from mmjax.models.layers import Features
from mmjax.registry import ENCODERS, FUSIONS

# Accepted ranks (batch axis included) and dtype kind of each modality
# (docs/architecture.md: Contracts).
MODALITY_RANKS = {"image": (4,), "audio": (2, 3), "text": (2,), "video": (5,)}
MODALITY_KINDS = {"image": "f", "audio": "f", "text": "iu", "video": "f"}


class LossWeights(nnx.Variable):
    """Weights of the fused and the unimodal heads' cross-entropies [1 + M]: state that training
    sets (Gradient-Blending), not a parameter the gradient updates."""


class BlendHistory(nnx.Variable):
    """The heads' train and val losses [2, 1 + M] at the last Gradient-Blending update (NaN
    before the first)."""


class MultimodalModel(nnx.Module):
    """batch {modality: x, <modality>_mask: [B] bool} -> logits [B, num_classes].

    A modality absent from the batch is treated as missing for every sample. A text
    modality's `<modality>.attention_mask` [B, L] bool, when in the batch, goes to its
    encoder as `mask=` (else the encoder takes id 0 for padding). Auxiliary
    losses (an encoder's or the fusion head's `aux_loss`, adversarial alignment) come from
    `forward`.
    """

    def __init__(
        self,
        encoders: dict[str, nnx.Module],
        fusion: nnx.Module,
        head: nnx.Module,
        aligner: nnx.Module | None = None,
        classification_weight: float = 1.0,
        frozen: tuple[str, ...] = (),
        unimodal_heads: dict[str, nnx.Module] | None = None,
        unimodal_weight: float = 0.0,
    ):
        self.encoders = nnx.Dict(encoders)
        self.fusion = fusion
        self.head = head
        self.aligner = nnx.data(aligner)
        self.classification_weight = classification_weight  # of the cross-entropy in training
        self.frozen = tuple(frozen)  # encoders run in inference mode, outside the gradient
        # A classifier per modality on its pooled features, trained by its own cross-entropy
        # with weight loss_weights[1 + i] (loss_weights[0]: the fused head's).
        self.unimodal_heads = nnx.data(nnx.Dict(unimodal_heads) if unimodal_heads else None)
        if unimodal_heads:
            weights = [1.0] + [unimodal_weight] * len(unimodal_heads)
            self.loss_weights = LossWeights(jnp.asarray(weights, jnp.float32))
            self.blend_history = BlendHistory(jnp.full((2, len(weights)), jnp.nan, jnp.float32))
        else:
            self.loss_weights = self.blend_history = nnx.data(None)

    def trainable(self) -> nnx.filterlib.Filter:
        """The parameters training updates: every nnx.Param outside the frozen encoders."""
        frozen = set(self.frozen)

        def in_frozen_encoder(path: tuple, _: Any) -> bool:
            return len(path) > 1 and path[0] == "encoders" and path[1] in frozen

        return nnx.All(nnx.Param, nnx.Not(in_frozen_encoder))

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(sorted(self.encoders.keys()))

    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool) -> jax.Array:
        return self.forward(batch, train=train)[0]

    def forward(
        self, batch: Mapping[str, jax.Array], *, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(logits [B, num_classes], {name: weighted auxiliary loss scalar})."""
        features, masks = self.encode(batch, train=train)
        return self.fuse(batch, features, masks, train=train)

    def fuse(
        self,
        batch: Mapping[str, jax.Array],
        features: dict[str, Features],
        masks: dict[str, jax.Array],
        *,
        train: bool,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """`forward` after `encode`: (logits, auxiliary losses) from the batch's encoded
        `features` and presence `masks`."""
        aux = {}
        for m, encoder in self.encoders.items():
            if m in batch and m not in self.frozen and hasattr(encoder, "aux_loss"):
                aux.update(encoder.aux_loss(batch[m], train=train))
        if hasattr(self.fusion, "aux_loss"):
            aux.update(self.fusion.aux_loss(features, masks))
        if self.aligner is not None:
            aux["adversarial"] = self.aligner(features, masks)
        return self.head(self.fusion(features, masks, train=train)), aux

    def unimodal_logits(
        self, features: dict[str, Features], masks: dict[str, jax.Array]
    ) -> dict[str, jax.Array]:
        """{m: logits [B, num_classes] of the fusion head and classifier, in inference mode,
        with every modality but m masked out}: what the model predicts from m alone."""
        return {
            m: self.head(
                self.fusion(features, {u: masks[u] & (u == m) for u in masks}, train=False)
            )
            for m in self.modalities
        }

    def head_losses(
        self,
        features: dict[str, Features],
        masks: dict[str, jax.Array],
        logits: jax.Array,
        labels: jax.Array,
        valid: jax.Array | None = None,
    ) -> jax.Array:
        """Mean cross-entropies [1 + M]: the fused logits' [B, C], then each unimodal head's
        over the samples in which its modality is present (needs `unimodal_heads`); `valid`
        [B] bool leaves padding rows out."""
        rows = jnp.ones(labels.shape, jnp.float32) if valid is None else valid.astype(jnp.float32)

        def mean(ce: jax.Array, weight: jax.Array) -> jax.Array:
            return jnp.sum(ce * weight) / jnp.maximum(jnp.sum(weight), 1.0)

        losses = [mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels), rows)]
        for m in self.modalities:
            logits_m = self.unimodal_heads[m](features[m].pooled).astype(jnp.float32)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits_m, labels)
            losses.append(mean(ce, rows * masks[m].astype(jnp.float32)))
        return jnp.stack(losses)

    def encode(
        self, batch: Mapping[str, jax.Array], *, train: bool
    ) -> tuple[dict[str, Features], dict[str, jax.Array]]:
        """Every modality's Features and [B] presence mask (zeros and False when absent)."""
        validate_batch(batch, self.modalities)
        present = [k for m in self.modalities for k in (m, f"{m}.pooled") if k in batch]
        size = batch[present[0]].shape[0]
        features, masks = {}, {}
        for m in self.modalities:
            if f"{m}.pooled" in batch:  # cached outputs of this (frozen) encoder
                features[m] = Features(*(batch[key] for key in cached_keys(m)))
                if features[m].pooled.shape[-1] != self.encoders[m].dim:
                    _fail(
                        f"{m}.pooled",
                        f"features of width {self.encoders[m].dim} (the encoder's)",
                        f"width {features[m].pooled.shape[-1]}",
                    )
                masks[m] = batch.get(f"{m}_mask", jnp.ones((size,), bool))
            elif m in self.frozen and m in batch:
                out = self._run_encoder(m, batch, train=False)
                features[m] = jax.tree.map(jax.lax.stop_gradient, out)
                masks[m] = batch.get(f"{m}_mask", jnp.ones((size,), bool))
            elif m in batch:
                features[m] = self._run_encoder(m, batch, train=train)
                masks[m] = batch.get(f"{m}_mask", jnp.ones((size,), bool))
            else:
                zeros = jnp.zeros((size, 1, self.encoders[m].dim))
                features[m] = Features(zeros, jnp.zeros((size, 1), bool), zeros[:, 0])
                masks[m] = jnp.zeros((size,), bool)
        return features, masks

    def _run_encoder(self, m: str, batch: Mapping[str, jax.Array], *, train: bool) -> Features:
        """Modality m's encoder on batch[m], given the batch's attention mask of m if any."""
        key = attention_key(m)
        if key in batch:
            return self.encoders[m](batch[m], train=train, mask=batch[key])
        return self.encoders[m](batch[m], train=train)


def _construct(where: str, factory: Any, *args: Any, rngs: nnx.Rngs) -> nnx.Module:
    """`factory(*args, rngs=rngs)`; a value its config cannot take (a negative width, ...)
    is a ConfigError naming the config section."""
    try:
        return factory(*args, rngs=rngs)
    except (TypeError, ValueError, ZeroDivisionError) as err:
        if isinstance(err, MmjaxError):
            raise
        raise ConfigError(f"{where}: cannot build it with these settings ({err})") from err


def build_model(cfg: ModelConfig, *, rngs: nnx.Rngs) -> MultimodalModel:
    """Construct the encoders, fusion head and classifier named by a typed ModelConfig."""
    encoders = {
        m: _construct(f"model.encoders.{m}", ENCODERS.get(c.name), c.cfg, rngs=rngs)
        for m, c in cfg.encoders
    }
    dims = {m: enc.dim for m, enc in encoders.items()}
    fusion = _construct(
        "model.fusion", FUSIONS.get(cfg.fusion.name), dims, cfg.fusion.cfg, rngs=rngs
    )
    head = Classifier(fusion.dim, cfg.num_classes, rngs=rngs)
    aligner = None
    if cfg.adversarial_weight > 0:
        aligner = ModalityDiscriminator(dims, weight=cfg.adversarial_weight, rngs=rngs)
    unimodal = None
    if cfg.unimodal_weight > 0:
        unimodal = {m: Classifier(d, cfg.num_classes, rngs=rngs) for m, d in sorted(dims.items())}
    return MultimodalModel(
        encoders,
        fusion,
        head,
        aligner,
        cfg.classification_weight,
        frozen=cfg.frozen,
        unimodal_heads=unimodal,
        unimodal_weight=cfg.unimodal_weight,
    )


def _kind(dtype: Any) -> str:
    """numpy's dtype kind ('f', 'i', 'u', 'b', ...), with bfloat16 and the other ml_dtypes
    floats (kind 'V' to numpy) as 'f'."""
    return "f" if jnp.issubdtype(dtype, jnp.floating) else np.dtype(dtype).kind


def _fail(field: str, expected: str, got: Any) -> None:
    raise InputError(f"{field}: expected {expected}, got {got}")


def _array(key: str, x: Any) -> Any:
    """`x` if it has a shape and dtype (numpy, jax or a tracer), else as a numpy array."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return x
    try:
        return np.asarray(x)
    except (ValueError, TypeError, OverflowError):  # ragged nested lists, huge ints, ...
        _fail(key, "an array (or a nested list of equal-length rows)", type(x).__name__)


def _is_host_float(x: Any) -> bool:
    """A numpy float array: its values can be checked without a device transfer."""
    return isinstance(x, np.ndarray) and _kind(x.dtype) == "f"


def _check_cached(m: str, arrays: Mapping[str, Any], size: int | None) -> None:
    """Cached Features of modality `m`: tokens [B, T, D], token_mask [B, T], pooled [B, D]."""
    tokens, mask, pooled = (arrays[k] for k in cached_keys(m))
    b, t, d = tokens.shape if tokens.ndim == 3 else (None, None, None)
    if b != size or _kind(tokens.dtype) != "f":
        _fail(f"{m}.tokens", f"a float array [{size}, T, D]", f"{tokens.dtype} {tokens.shape}")
    if tuple(mask.shape) != (size, t) or mask.dtype != bool:
        _fail(f"{m}.token_mask", f"a bool array [{size}, {t}]", f"{mask.dtype} {mask.shape}")
    if tuple(pooled.shape) != (size, d) or _kind(pooled.dtype) != "f":
        _fail(f"{m}.pooled", f"a float array [{size}, {d}]", f"{pooled.dtype} {pooled.shape}")
    for key, x in ((f"{m}.tokens", tokens), (f"{m}.pooled", pooled)):
        if _is_host_float(x) and not np.isfinite(x).all():
            _fail(key, "finite values", "NaN or infinity")


def _check_attention(m: str, ids: Any, mask: Any) -> None:
    """The attention mask of text modality m: bool, of exactly the shape of its integer token
    ids [B, L] (static checks, so traced arrays pass through)."""
    key = attention_key(m)
    if _kind(ids.dtype) not in "iu":
        _fail(key, f"integer token ids in {m!r} to mask", f"{m!r} of dtype {ids.dtype}")
    if mask.dtype != bool or tuple(mask.shape) != tuple(ids.shape):
        _fail(
            key,
            f"a bool array of the shape of {m!r}'s ids {tuple(ids.shape)}",
            f"{mask.dtype} {tuple(mask.shape)}",
        )


def validate_batch(
    batch: Mapping[str, Any],
    modalities: tuple[str, ...],
    *,
    num_classes: int | None = None,
    sample_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> None:
    """Check a batch's keys, shapes and dtypes (and, for host arrays, its values); raise an
    InputError naming the field. Works on traced arrays too: their checks are static."""
    if not isinstance(batch, Mapping):
        _fail("batch", "a dict of arrays", type(batch).__name__)
    allowed = set(modalities) | {f"{m}_mask" for m in modalities} | {"label"}
    allowed |= {key for m in modalities for key in cached_keys(m)}
    allowed |= {attention_key(m) for m in modalities if "i" in MODALITY_KINDS.get(m, "iu")}
    for key in batch:
        if key not in allowed:
            _fail(key, f"one of the model's keys {sorted(allowed)}", "an unknown key")
    cached = [m for m in modalities if any(k in batch for k in cached_keys(m))]
    present = [m for m in modalities if m in batch]
    for m in modalities:
        if attention_key(m) in batch and m not in batch:
            _fail(attention_key(m), f"its token ids {m!r} in the batch too", "none")
    for m in cached:
        if m in present:
            _fail(m, "either the input or its cached features", "both")
        if not all(k in batch for k in cached_keys(m)):
            _fail(m, "cached features with all of tokens, token_mask and pooled", "only some")
    if not present + cached:
        _fail("batch", f"at least one of the modalities {list(modalities)}", sorted(batch))
    arrays = {k: _array(k, v) for k, v in batch.items()}
    first_key = present[0] if present else f"{cached[0]}.pooled"
    first = arrays[first_key]
    if not first.ndim or not first.shape[0]:
        _fail(
            first_key,
            "an array whose first axis is a batch of >= 1 samples",
            f"shape {first.shape}",
        )
    size = first.shape[0]
    for m in cached:
        _check_cached(m, arrays, size)
    for m in present:
        x = arrays[m]
        if not x.ndim:
            _fail(m, "an array with a batch axis first", "shape ()")
        ranks = MODALITY_RANKS.get(m)
        if ranks and x.ndim not in ranks:
            _fail(m, f"rank {' or '.join(map(str, ranks))} (batch axis first)", f"shape {x.shape}")
        if m in MODALITY_KINDS and _kind(x.dtype) not in MODALITY_KINDS[m]:
            kind = "a floating" if MODALITY_KINDS[m] == "f" else "an integer"
            _fail(m, f"{kind} dtype", x.dtype)
        if sample_shapes and m in sample_shapes and tuple(x.shape[1:]) != tuple(sample_shapes[m]):
            _fail(m, f"per-sample shape {tuple(sample_shapes[m])}", f"{tuple(x.shape[1:])}")
        if x.shape[0] != size:
            _fail(m, f"batch size {size} (as {present[0]})", x.shape[0])
        if _is_host_float(x) and not np.isfinite(x).all():
            _fail(m, "finite values", "NaN or infinity")
        if attention_key(m) in arrays:
            _check_attention(m, x, arrays[attention_key(m)])
    for m in modalities:
        mask = arrays.get(f"{m}_mask")
        if mask is not None and (mask.dtype != bool or tuple(mask.shape) != (size,)):
            _fail(f"{m}_mask", f"a bool array of shape ({size},)", f"{mask.dtype} {mask.shape}")
    label = arrays.get("label")
    if label is not None:
        if _kind(label.dtype) not in "iu" or tuple(label.shape) != (size,):
            _fail("label", f"an integer array of shape ({size},)", f"{label.dtype} {label.shape}")
        host = num_classes is not None and isinstance(label, np.ndarray) and label.size
        if host and (label.min() < 0 or label.max() >= num_classes):
            _fail("label", f"values in [0, {num_classes})", f"[{label.min()}, {label.max()}]")
