"""Benchmark sizes and random inputs (random arrays are fine for timing: docs/architecture.md).

Three scales: `smoke` (tiny networks and inputs: checks that every suite runs), `cpu` (the
real networks on inputs a 2-core machine finishes in minutes) and `accelerator` (ImageNet-
sized images, large batches).
"""

import dataclasses
from typing import Any

import numpy as np

from benchmarks.harness import Context

# Encoder Config fields set in a smoke run: the tiny sizes of the registry-driven tests.
SMOKE_FIELDS = {
    "width": 8,
    "hidden": 16,
    "dim": 16,
    "layers": 1,
    "depth": 1,
    "heads": 2,
    "intermediate": 32,
    "vocab_size": 500,
    "channels": (8, 16),
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Per-example input sizes and the batch sizes to sweep."""

    image: int  # square side, pixels
    audio_seconds: float
    text_tokens: int
    video_frames: int
    video_side: int
    batches: tuple[int, ...]


def sizes(ctx: Context) -> Sizes:
    if ctx.smoke:
        return Sizes(16, 0.25, 8, 2, 16, batches=(2,))
    if ctx.accelerator:
        return Sizes(224, 1.0, 128, 16, 112, batches=(32, 128, 256))
    return Sizes(64, 1.0, 64, 8, 64, batches=(8, 32, 128))


def encoder_config(cls: Any, ctx: Context, size: Sizes) -> Any:
    """The encoder's default Config (the real network); tiny in a smoke run. Vision
    Transformers get a position grid sized for the benchmark's images."""
    names = {f.name for f in dataclasses.fields(cls.Config)}
    fields = {k: v for k, v in SMOKE_FIELDS.items() if k in names} if ctx.smoke else {}
    if "image_size" in names:
        fields["image_size"] = size.image
        if ctx.smoke:
            fields["patch"] = 8
    return cls.Config(**fields)


def smoke_section(section: dict[str, Any]) -> dict[str, Any]:
    """A model config section with every encoder shrunk to the smoke sizes (in place)."""
    from mmjax.registry import ENCODERS

    for spec in section["encoders"].values():
        names = {f.name for f in dataclasses.fields(ENCODERS.get(spec["name"]).Config)}
        spec.update({k: v for k, v in SMOKE_FIELDS.items() if k in names})
    return section


def encoder_input(cls: Any, cfg: Any, size: Sizes, batch: int, seed: int = 0) -> np.ndarray:
    """A random input batch of the kind `cls` (a registered encoder class) takes."""
    rng = np.random.default_rng(seed)
    if cls.modality == "image":
        return rng.random((batch, size.image, size.image, cfg.in_channels), np.float32)
    if cls.modality == "audio":
        samples = int(cfg.sample_rate * size.audio_seconds)
        return rng.standard_normal((batch, samples), np.float32)
    if cls.modality == "text":
        return rng.integers(1, cfg.vocab_size, (batch, size.text_tokens), np.int32)
    if cls.modality == "video":
        side, frames = size.video_side, size.video_frames
        return rng.random((batch, frames, side, side, cfg.in_channels), np.float32)
    raise ValueError(f"no benchmark input for modality {cls.modality!r}")


def label_batch(batch: int, classes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, batch).astype(np.int32)
