"""Input imperfections for robustness curves: per input kind, named corruptions at LEVELS
strengths, level 0 being no corruption at all.

Every corruption works on a whole batch of one modality, as the data pipeline yields it
(images [B, H, W, C] and video frames [B, F, H, W, C] as floats in [0, 1], waveforms [B, N],
token ids [B, L] with their attention mask), draws its randomness from the generator it is
given (so a curve is reproducible from a seed) and returns new arrays: nothing is changed in
place. A level's strength is the corruption's own parameter (`Corruption.values`), from mild
at level 1 to destroying the input, or nearly, at the last level, as MultiBench's curves run
from clean to fully imperfect (Liang et al. 2021).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

from mmjax.batch_keys import attention_key

LEVELS = 10
_SEVERITY = np.linspace(0.0, 1.0, LEVELS)  # level i's share of the strongest corruption

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Corruption:
    """One imperfection of one input kind. `apply(batch, modality, value, rng, dataset)` returns
    the batch with `modality` corrupted at parameter `value` (`dataset`: the run's dataset
    description, which text corruptions need for its tokenizer)."""

    name: str
    kind: str  # the input kind it corrupts: image, audio, text or video
    parameter: str  # what `values` measure
    values: tuple[float, ...]  # the parameter at each level; values[0] leaves the input as is
    apply: Callable[[Batch, str, float, np.random.Generator, dict[str, Any]], Batch]


def _replaced(batch: Batch, **arrays: np.ndarray) -> Batch:
    return {**batch, **arrays}


# Images (and each frame of a video): [..., H, W, C] floats in [0, 1].


def _gaussian_noise(batch: Batch, m: str, std: float, rng: np.random.Generator, _) -> Batch:
    x = batch[m]
    noisy = x + rng.normal(0.0, std, x.shape)
    return _replaced(batch, **{m: np.clip(noisy, 0.0, 1.0).astype(np.float32)})


def _blur(batch: Batch, m: str, relative_sigma: float, rng: np.random.Generator, _) -> Batch:
    """Gaussian blur with sigma = `relative_sigma` x the image's shorter side, in pixels."""
    x = batch[m]
    sigma = relative_sigma * min(x.shape[-3:-1])
    sigmas = [0.0] * (x.ndim - 3) + [sigma, sigma, 0.0]
    blurred = ndimage.gaussian_filter(x, sigmas, mode="nearest")
    return _replaced(batch, **{m: blurred.astype(np.float32)})


def _occlusion(batch: Batch, m: str, area: float, rng: np.random.Generator, _) -> Batch:
    """A mid-grey (0.5) rectangle covering `area` of each image at a random place; the frames
    of one video share their sample's rectangle (an occluder in front of the camera)."""
    x = batch[m].copy()
    h, w = x.shape[-3:-1]
    oh, ow = round(np.sqrt(area) * h), round(np.sqrt(area) * w)
    frames = x.reshape(x.shape[0], -1, h, w, x.shape[-1])  # a view: [B, F, H, W, C]
    for sample in frames:
        top, left = rng.integers(0, h - oh + 1), rng.integers(0, w - ow + 1)
        sample[:, top : top + oh, left : left + ow] = 0.5
    return _replaced(batch, **{m: x})


# Audio: waveforms [B, N].


def _white_noise(batch: Batch, m: str, snr_db: float, rng: np.random.Generator, _) -> Batch:
    """White noise at `snr_db` below each clip's own power (a silent clip stays silent)."""
    wave = batch[m]
    power = np.mean(wave**2, axis=-1, keepdims=True) / 10 ** (snr_db / 10)
    noisy = wave + rng.normal(0.0, 1.0, wave.shape) * np.sqrt(power)
    return _replaced(batch, **{m: noisy.astype(np.float32)})


def _time_mask(batch: Batch, m: str, fraction: float, rng: np.random.Generator, _) -> Batch:
    """One span of `fraction` of each clip, at a random place, set to silence."""
    wave = batch[m].copy()
    span = round(fraction * wave.shape[-1])
    for clip in wave:
        start = rng.integers(0, wave.shape[-1] - span + 1)
        clip[start : start + span] = 0.0
    return _replaced(batch, **{m: wave})


# Text: token ids [B, L] and attention mask [B, L], read back to words and tokenised again.


def _retokenized(
    batch: Batch, m: str, dataset: dict[str, Any], edit: Callable[[list[str]], list[str]]
) -> Batch:
    from mmjax.data.inputs import text_words, words_to_ids

    key = attention_key(m)
    ids, mask = words_to_ids(
        dataset, [edit(ws) for ws in text_words(dataset, batch[m], batch[key])]
    )
    return _replaced(batch, **{m: ids.astype(np.int32), key: mask})


def _word_dropout(batch: Batch, m: str, p: float, rng: np.random.Generator, dataset) -> Batch:
    """Each word removed with probability `p`."""
    return _retokenized(batch, m, dataset, lambda ws: [w for w in ws if rng.random() >= p])


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _typo(word: str, rng: np.random.Generator) -> str:
    """One keyboard slip that changes the word: two different neighbouring letters swapped, a
    letter dropped, doubled, or replaced by another letter."""
    kind = int(rng.integers(4)) if len(word) > 1 else 3
    swappable = [i for i in range(len(word) - 1) if word[i] != word[i + 1]]
    if kind == 0 and swappable:
        i = swappable[int(rng.integers(len(swappable)))]
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    i = int(rng.integers(len(word)))
    if kind == 1:
        return word[:i] + word[i + 1 :]
    if kind == 2:
        return word[: i + 1] + word[i:]
    others = _LETTERS.replace(word[i].lower(), "")
    return word[:i] + others[int(rng.integers(len(others)))] + word[i + 1 :]


def _typos(batch: Batch, m: str, p: float, rng: np.random.Generator, dataset) -> Batch:
    """Each word misspelt (one slip, `_typo`) with probability `p`; "[UNK]" (an unknown word
    read back) stays unknown as it is."""

    def misspelt(w: str) -> str:
        return _typo(w, rng) if rng.random() < p and w != "[UNK]" else w

    return _retokenized(batch, m, dataset, lambda ws: [misspelt(w) for w in ws])


# Video: frames [B, F, H, W, C].


def _dropped_frames(batch: Batch, m: str, p: float, rng: np.random.Generator, _) -> Batch:
    """Each frame lost (black) with probability `p`."""
    x = batch[m]
    lost = rng.random(x.shape[:2]) < p
    return _replaced(batch, **{m: np.where(lost[:, :, None, None, None], 0.0, x)})


def _repeated_frames(batch: Batch, m: str, p: float, rng: np.random.Generator, _) -> Batch:
    """Each frame after the first replaced with probability `p` by the frame shown before it (a
    stalled stream repeats its last frame)."""
    x = batch[m].copy()
    stalled = rng.random(x.shape[:2]) < p
    for f in range(1, x.shape[1]):
        x[stalled[:, f], f] = x[stalled[:, f], f - 1]
    return _replaced(batch, **{m: x})


def _image_corruptions(kind: str) -> list[Corruption]:
    return [
        Corruption(
            "gaussian_noise", kind, "noise std (pixel values in [0, 1])",
            tuple(0.9 * _SEVERITY), _gaussian_noise,
        ),
        Corruption(
            "blur", kind, "blur sigma / the image's shorter side",
            tuple(0.25 * _SEVERITY), _blur,
        ),
        Corruption("occlusion", kind, "occluded share of the image", tuple(_SEVERITY), _occlusion),
    ]  # fmt: skip


CORRUPTIONS: dict[str, dict[str, Corruption]] = {
    kind: {c.name: c for c in corruptions}
    for kind, corruptions in {
        "image": _image_corruptions("image"),
        "audio": [
            Corruption(
                "white_noise", "audio", "SNR in dB (level 0: no noise)",
                (float("inf"), *np.linspace(30.0, -10.0, LEVELS - 1)), _white_noise,
            ),
            Corruption(
                "time_mask", "audio", "silenced share of the clip",
                tuple(_SEVERITY), _time_mask,
            ),
        ],
        "text": [
            Corruption(
                "word_dropout", "text", "probability a word is removed",
                tuple(_SEVERITY), _word_dropout,
            ),
            Corruption("typos", "text", "probability a word is misspelt", tuple(_SEVERITY), _typos),
        ],
        "video": [
            Corruption(
                "dropped_frames", "video", "probability a frame is lost",
                tuple(_SEVERITY), _dropped_frames,
            ),
            Corruption(
                "repeated_frames", "video", "probability a frame repeats the one before",
                tuple(_SEVERITY), _repeated_frames,
            ),
            *_image_corruptions("video"),
        ],
    }.items()
}  # fmt: skip
