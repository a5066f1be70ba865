"""Model components; importing this module registers every built-in encoder, fusion and model."""

from mmjax.models import audio, fusion, image, text, zoo  # noqa: F401  (registration)
from mmjax.models.layers import Features
from mmjax.models.multimodal import MultimodalModel, build_model, validate_batch

__all__ = ["Features", "MultimodalModel", "build_model", "validate_batch"]
