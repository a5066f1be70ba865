"""Pretrained encoders from pip packages: torch-free weight readers, name tables onto mmjax
encoders, and the catalog of what can be imported (`CATALOG`)."""

from mmjax.pretrained.catalog import CATALOG, PretrainedEncoder
from mmjax.pretrained.load import (
    load_classifier,
    load_encoder,
    place,
    place_pretrained,
    sentence_embedding,
    tokenize,
)
from mmjax.pretrained.safetensors_file import load_safetensors
from mmjax.pretrained.torch_file import load_torch_file

__all__ = [
    "CATALOG",
    "PretrainedEncoder",
    "load_classifier",
    "load_encoder",
    "load_safetensors",
    "load_torch_file",
    "place",
    "place_pretrained",
    "sentence_embedding",
    "tokenize",
]
