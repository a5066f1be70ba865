"""MultimodalModel: {modality: encoder} + fusion head + classifier, with missing-modality masks."""

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.config import ModelConfig
from mmjax.errors import InputError
from mmjax.models.alignment import ModalityDiscriminator
from mmjax.models.heads import Classifier
from mmjax.models.layers import Features
from mmjax.registry import ENCODERS, FUSIONS

# Accepted ranks (batch axis included) and dtype kind of each modality (DESIGN.md: Batch).
MODALITY_RANKS = {"image": (4,), "audio": (2, 3), "text": (2,), "video": (5,)}
MODALITY_KINDS = {"image": "f", "audio": "f", "text": "iu", "video": "f"}


class MultimodalModel(nnx.Module):
    """batch {modality: x, <modality>_mask: [B] bool} -> logits [B, num_classes].

    A modality absent from the batch is treated as missing for every sample. Auxiliary
    losses (a fusion head's `aux_loss`, adversarial alignment) come from `forward`.
    """

    def __init__(
        self,
        encoders: dict[str, nnx.Module],
        fusion: nnx.Module,
        head: nnx.Module,
        aligner: nnx.Module | None = None,
    ):
        self.encoders = nnx.Dict(encoders)
        self.fusion = fusion
        self.head = head
        self.aligner = nnx.data(aligner)

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
        aux = {}
        if hasattr(self.fusion, "aux_loss"):
            aux.update(self.fusion.aux_loss(features, masks))
        if self.aligner is not None:
            aux["adversarial"] = self.aligner(features, masks)
        return self.head(self.fusion(features, masks, train=train)), aux

    def encode(
        self, batch: Mapping[str, jax.Array], *, train: bool
    ) -> tuple[dict[str, Features], dict[str, jax.Array]]:
        """Every modality's Features and [B] presence mask (zeros and False when absent)."""
        present = [m for m in self.modalities if m in batch]
        if not present:
            raise InputError(f"batch has none of the model's modalities {list(self.modalities)}")
        size = batch[present[0]].shape[0]
        features, masks = {}, {}
        for m in self.modalities:
            if m in batch:
                features[m] = self.encoders[m](batch[m], train=train)
                masks[m] = batch.get(f"{m}_mask", jnp.ones((size,), bool))
            else:
                zeros = jnp.zeros((size, 1, self.encoders[m].dim))
                features[m] = Features(zeros, jnp.zeros((size, 1), bool), zeros[:, 0])
                masks[m] = jnp.zeros((size,), bool)
        return features, masks


def build_model(cfg: ModelConfig, *, rngs: nnx.Rngs) -> MultimodalModel:
    """Construct the encoders, fusion head and classifier named by a typed ModelConfig."""
    encoders = {m: ENCODERS.get(c.name)(c.cfg, rngs=rngs) for m, c in cfg.encoders}
    dims = {m: enc.dim for m, enc in encoders.items()}
    fusion = FUSIONS.get(cfg.fusion.name)(dims, cfg.fusion.cfg, rngs=rngs)
    head = Classifier(fusion.dim, cfg.num_classes, rngs=rngs)
    aligner = None
    if cfg.adversarial_weight > 0:
        aligner = ModalityDiscriminator(dims, weight=cfg.adversarial_weight, rngs=rngs)
    return MultimodalModel(encoders, fusion, head, aligner)


def _fail(field: str, expected: str, got: Any) -> None:
    raise InputError(f"{field}: expected {expected}, got {got}")


def validate_batch(
    batch: Mapping[str, Any],
    modalities: tuple[str, ...],
    *,
    num_classes: int | None = None,
    sample_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> None:
    """Check a host batch's keys, shapes, dtypes and values; raise InputError naming the field."""
    allowed = set(modalities) | {f"{m}_mask" for m in modalities} | {"label"}
    for key in batch:
        if key not in allowed:
            _fail(key, f"one of the model's keys {sorted(allowed)}", "an unknown key")
    present = [m for m in modalities if m in batch]
    if not present:
        _fail("batch", f"at least one of the modalities {list(modalities)}", sorted(batch))
    size = np.shape(batch[present[0]])[0] if np.ndim(batch[present[0]]) else None
    for m in present:
        x = batch[m]
        shape, dtype = np.shape(x), np.asarray(x).dtype if isinstance(x, np.ndarray) else x.dtype
        ranks = MODALITY_RANKS.get(m)
        if ranks and len(shape) not in ranks:
            _fail(m, f"rank {' or '.join(map(str, ranks))} (batch axis first)", f"shape {shape}")
        if m in MODALITY_KINDS and np.dtype(dtype).kind not in MODALITY_KINDS[m]:
            kind = "a floating" if MODALITY_KINDS[m] == "f" else "an integer"
            _fail(m, f"{kind} dtype", dtype)
        if sample_shapes and m in sample_shapes and tuple(shape[1:]) != tuple(sample_shapes[m]):
            _fail(m, f"per-sample shape {tuple(sample_shapes[m])}", f"{tuple(shape[1:])}")
        if shape[0] != size:
            _fail(m, f"batch size {size} (as {present[0]})", shape[0])
        if isinstance(x, np.ndarray) and x.dtype.kind == "f" and not np.isfinite(x).all():
            _fail(m, "finite values", "NaN or infinity")
    for m in modalities:
        if f"{m}_mask" in batch:
            mask = np.asarray(batch[f"{m}_mask"])
            if mask.dtype != bool or mask.shape != (size,):
                _fail(f"{m}_mask", f"a bool array of shape ({size},)", f"{mask.dtype} {mask.shape}")
    if "label" in batch:
        label = np.asarray(batch["label"])
        if label.dtype.kind not in "iu" or label.shape != (size,):
            _fail("label", f"an integer array of shape ({size},)", f"{label.dtype} {label.shape}")
        if (
            num_classes is not None
            and label.size
            and not (label.min() >= 0 and label.max() < num_classes)
        ):
            _fail("label", f"values in [0, {num_classes})", f"range [{label.min()}, {label.max()}]")
