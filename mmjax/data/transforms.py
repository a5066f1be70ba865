"""Numpy-only, picklable per-record transforms (they run in grain worker processes)."""

import dataclasses

import grain
import numpy as np

from mmjax.batch_keys import attention_key, cached_keys, presence_key
from mmjax.data.records import decode_record
from mmjax.errors import DataError

# How a stored integer array becomes the float input the encoders expect.
SCALES = {np.dtype("uint8"): 1 / 255.0, np.dtype("int16"): 1 / 32767.0}


@dataclasses.dataclass(frozen=True)
class Decode(grain.transforms.Map):
    """record bytes -> {modality: float32 or int32 ids, <modality>_mask, label: int32}; a cached
    modality gives its `m.tokens`, `m.token_mask`, `m.pooled` instead. `<modality>_mask` is the
    record's own (False: missing for this example, as an import stores it), else True. Token ids
    [L] come with `<modality>.attention_mask` [L] bool: the record's own (the tokenizer's),
    else `ids != 0` for builds that store none.

    A record that is corrupt, lacks a field, or has a field of the wrong dtype raises a
    DataError naming the field. Given `shapes` ((modality, per-sample shape) pairs, from the
    dataset's info) and `num_classes`, each record's shapes and label are checked too, so a bad
    record fails here rather than in batching or as a silently wrong label.
    """

    modalities: tuple[str, ...]
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    num_classes: int | None = None

    def map(self, element: bytes) -> dict[str, np.ndarray]:
        record = decode_record(element)
        shapes = dict(self.shapes)
        out = {}
        for m in self.modalities:
            out[presence_key(m)] = _presence(record, m)
            if any(key in record for key in cached_keys(m)):  # mmjax features extract
                out |= _cached(record, m)
                continue
            x = _field(record, m)
            if x.dtype.kind not in "fiu":
                _bad(m, "a float or integer array", x.dtype)
            if m in shapes and x.shape != tuple(shapes[m]):
                _bad(m, f"per-sample shape {tuple(shapes[m])}", x.shape)
            if x.dtype in SCALES:
                out[m] = x.astype(np.float32) * SCALES[x.dtype]
            elif x.dtype.kind == "f":
                out[m] = _finite(m, x.astype(np.float32))
            else:  # token ids
                if x.size and (x.min() < 0 or x.max() > _INT32_MAX):
                    _bad(m, f"token ids in [0, {_INT32_MAX}]", f"[{x.min()}, {x.max()}]")
                out[m] = x.astype(np.int32)
                out[attention_key(m)] = _attention(record, m, out[m])
        label = _field(record, "label")
        if label.dtype.kind not in "iu" or label.shape != ():
            _bad("label", "an integer scalar", f"{label.dtype} {label.shape}")
        high = _INT32_MAX if self.num_classes is None else self.num_classes - 1
        if not 0 <= label <= high:
            _bad("label", f"a class in [0, {high}]", label)
        out["label"] = label.astype(np.int32)
        return out


_INT32_MAX = np.iinfo(np.int32).max


def _bad(field: str, expected: str, got: object) -> None:
    raise DataError(f"record field {field!r}: expected {expected}, got {got}")


def _field(record: dict[str, np.ndarray], key: str) -> np.ndarray:
    if key not in record:
        _bad(key, "a field of the record", f"only {sorted(record)}")
    return record[key]


def _presence(record: dict[str, np.ndarray], m: str) -> np.bool_:
    """The record's `<m>_mask` (a bool scalar), or True when it stores none."""
    key = presence_key(m)
    if key not in record:
        return np.bool_(True)
    if record[key].dtype != bool or record[key].shape != ():
        _bad(key, "a bool scalar", f"{record[key].dtype} {record[key].shape}")
    return np.bool_(record[key])


def _attention(record: dict[str, np.ndarray], m: str, ids: np.ndarray) -> np.ndarray:
    """The record's attention mask of token ids [L] (bool [L]), or `ids != 0` when it stores
    none (builds from before the tokenizer's mask was kept)."""
    key = attention_key(m)
    if key not in record:
        return ids != 0
    mask = record[key]
    if mask.dtype != bool or mask.shape != ids.shape:
        _bad(key, f"a bool array of the ids' shape {ids.shape}", f"{mask.dtype} {mask.shape}")
    return mask


def _finite(key: str, x: np.ndarray) -> np.ndarray:
    if not np.isfinite(x).all():
        _bad(key, "finite values", "NaN or infinity")
    return x


def _cached(record: dict[str, np.ndarray], m: str) -> dict[str, np.ndarray]:
    """Checked cached Features of modality `m`: tokens [T, D], token_mask [T] bool, pooled [D]."""
    tokens, mask, pooled = (_field(record, key) for key in cached_keys(m))
    if tokens.dtype.kind != "f" or tokens.ndim != 2:
        _bad(f"{m}.tokens", "a float array [T, D]", f"{tokens.dtype} {tokens.shape}")
    t, d = tokens.shape
    if mask.dtype != bool or mask.shape != (t,):
        _bad(f"{m}.token_mask", f"a bool array [{t}]", f"{mask.dtype} {mask.shape}")
    if pooled.dtype.kind != "f" or pooled.shape != (d,):
        _bad(f"{m}.pooled", f"a float array [{d}]", f"{pooled.dtype} {pooled.shape}")
    return {
        f"{m}.tokens": _finite(f"{m}.tokens", tokens),
        f"{m}.token_mask": mask,
        f"{m}.pooled": _finite(f"{m}.pooled", pooled),
    }


@dataclasses.dataclass(frozen=True)
class AddNoise(grain.transforms.RandomMap):
    """Gaussian pixel noise on `image` (clipped to [0, 1]) and white noise on `audio` at an SNR.

    With `levels`, each example's image noise and audio noise are scaled by their own uniform
    draws in [0, 1] (amplitude), so training sees every level from none to the set one.

    The noise is drawn in float64, as the published models' evaluation numbers were: drawing
    it in float32 is faster but changes the noise for a seed, and those numbers with it."""

    image_std: float
    audio_snr_db: float
    levels: bool = False

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        out = dict(element)
        if "image" in out and self.image_std > 0:
            std = self.image_std * (rng.uniform() if self.levels else 1.0)
            noisy = out["image"] + rng.normal(0.0, std, out["image"].shape)
            out["image"] = np.clip(noisy, 0.0, 1.0).astype(np.float32)
        if "audio" in out and self.audio_snr_db < 100:
            wave = out["audio"]
            std = np.sqrt(np.mean(wave**2) / 10 ** (self.audio_snr_db / 10))
            std *= rng.uniform() if self.levels else 1.0
            out["audio"] = (wave + rng.normal(0.0, std, wave.shape)).astype(np.float32)
        return out


@dataclasses.dataclass(frozen=True)
class DropModalities(grain.transforms.RandomMap):
    """Training-time modality dropout: mask each modality with probability `rate`, keeping one."""

    modalities: tuple[str, ...]
    rate: float

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        out = dict(element)
        keep = rng.random(len(self.modalities)) >= self.rate
        if not keep.any():
            keep[rng.integers(len(self.modalities))] = True
        for m, k in zip(self.modalities, keep):
            out[f"{m}_mask"] = np.bool_(k)
        return out
