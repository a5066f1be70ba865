"""Model components; importing this module registers every built-in encoder, fusion and model."""

from mmjax.models import (  # noqa: F401  (registration)
    audio,
    fusion,
    fusion_attention,
    fusion_contrastive,
    fusion_gates,
    fusion_products,
    image,
    text,
    video,
    zoo,
)
from mmjax.models.layers import Features
from mmjax.models.multimodal import MultimodalModel, build_model, validate_batch

__all__ = ["Features", "MultimodalModel", "build_model", "validate_batch"]
