"""Numpy-only, picklable per-record transforms (they run in grain worker processes)."""

import dataclasses

import grain
import numpy as np

from mmjax.data.features_store import cached_keys
from mmjax.data.records import decode_record

# How a stored integer array becomes the float input the encoders expect.
_SCALES = {np.dtype("uint8"): 1 / 255.0, np.dtype("int16"): 1 / 32767.0}


@dataclasses.dataclass(frozen=True)
class Decode(grain.transforms.Map):
    """record bytes -> {modality: float32 or int32 ids, <modality>_mask: True, label: int32};
    a cached modality gives its `m.tokens`, `m.token_mask`, `m.pooled` instead."""

    modalities: tuple[str, ...]

    def map(self, element: bytes) -> dict[str, np.ndarray]:
        record = decode_record(element)
        out = {}
        for m in self.modalities:
            out[f"{m}_mask"] = np.bool_(True)
            if f"{m}.pooled" in record:  # cached encoder outputs (mmjax features extract)
                out |= {key: record[key] for key in cached_keys(m)}
                continue
            x = record[m]
            if x.dtype in _SCALES:
                out[m] = x.astype(np.float32) * _SCALES[x.dtype]
            elif x.dtype.kind == "f":
                out[m] = x.astype(np.float32)
            else:  # token ids
                out[m] = x.astype(np.int32)
        out["label"] = record["label"].astype(np.int32)
        return out


@dataclasses.dataclass(frozen=True)
class AddNoise(grain.transforms.RandomMap):
    """Gaussian pixel noise on `image` (clipped to [0, 1]) and white noise on `audio` at an SNR."""

    image_std: float
    audio_snr_db: float

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        out = dict(element)
        if "image" in out and self.image_std > 0:
            noisy = out["image"] + rng.normal(0.0, self.image_std, out["image"].shape)
            out["image"] = np.clip(noisy, 0.0, 1.0).astype(np.float32)
        if "audio" in out and self.audio_snr_db < 100:
            wave = out["audio"]
            power = np.mean(wave**2) / 10 ** (self.audio_snr_db / 10)
            out["audio"] = (wave + rng.normal(0.0, np.sqrt(power), wave.shape)).astype(np.float32)
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
