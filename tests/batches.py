"""Random batches shaped like AV-Digits (8x8 images, 1-D audio), for step-level tests."""

from collections.abc import Iterator

import numpy as np


def avdigits_batches(n: int, size: int, audio: int) -> Iterator[dict[str, np.ndarray]]:
    """`n` batches of `size` rows with `audio` samples each; about a fifth of the images are
    masked out (missing), every audio is present. Seeded: the same call gives the same data."""
    rng = np.random.default_rng(0)
    for _ in range(n):
        yield {
            "image": rng.random((size, 8, 8, 1), np.float32),
            "audio": rng.standard_normal((size, audio)).astype(np.float32),
            "image_mask": rng.random(size) > 0.2,
            "audio_mask": np.ones(size, bool),
            "label": rng.integers(0, 10, size).astype(np.int32),
        }
