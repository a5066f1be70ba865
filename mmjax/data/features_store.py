"""A directory of cached encoder outputs, written by `mmjax features extract`.

Layout: DIR/info.json and DIR/<split>.array_record-*; each record is the dataset's record with
every cached modality `m` replaced by its encoder's Features: `m.tokens` [T, D] float32,
`m.token_mask` [T] bool and `m.pooled` [D] float32. info.json is the source dataset's info
plus `cached` ({m: {"encoder": spec, "pretrained": name, "weights_sha256", "noise"}}) and
`source` (the `build_checksums` of the dataset build). Inputs get the dataset's noise
once, from a fixed per-record seed, so training on the store sees one noise draw, not a fresh
one per epoch.
"""

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from mmjax.config import DataConfig, ExperimentConfig, ModelConfig
from mmjax.data.source import DataSource
from mmjax.errors import ConfigError, DataError

INFO = "info.json"


class FeatureStore(DataSource):
    """A cached-features directory as a DataSource: it identifies itself by the dataset build
    it was extracted from and checks that a run's encoders are the ones whose outputs it holds."""

    def build_checksums(self) -> dict[str, Any]:
        return self.info["source"]

    def check_experiment(self, exp: ExperimentConfig) -> None:
        super().check_experiment(exp)
        for m, cached in self.info["cached"].items():
            if m in exp.model.modalities:
                check_cached_encoder(m, cached, exp)

    def check_model(self, model: nnx.Module) -> None:
        check_cached_weights(self.info["cached"], model)


def open_store(directory: Path) -> FeatureStore:
    """The store in `directory`; DataError if it holds none."""
    path = Path(directory) / INFO
    if not path.is_file():
        raise DataError(
            f"data.features: {directory} holds no cached features (no {INFO}); write them with "
            "`mmjax features extract --config ... --out DIR`"
        )
    return FeatureStore(Path(directory), json.loads(path.read_text()), "extract the features again")


def encoder_spec(cfg: ModelConfig, modality: str) -> dict[str, Any]:
    """The JSON form of `cfg`'s encoder for `modality`, as stored with cached features."""
    component = dict(cfg.encoders)[modality]
    fields = json.loads(json.dumps(dataclasses.asdict(component.cfg)))
    return {"name": component.name, **fields}


def weights_sha256(module: nnx.Module) -> str:
    """A fingerprint of a module's weights: every variable but RNG state, in path order."""
    digest = hashlib.sha256()
    flat = nnx.to_flat_state(jax.device_get(nnx.state(module, nnx.Not(nnx.RngState))))
    for path, value in sorted(flat, key=lambda item: "/".join(map(str, item[0]))):
        digest.update("/".join(map(str, path)).encode())
        digest.update(np.ascontiguousarray(np.asarray(value)).tobytes())
    return digest.hexdigest()


def noise_of(data: DataConfig) -> dict[str, float]:
    return {"image_noise": data.image_noise, "audio_snr_db": data.audio_snr_db}


def check_cached_weights(cached: dict[str, Any], model: nnx.Module) -> None:
    """ConfigError unless each cached modality's encoder in `model` has the weights the
    features were computed with (e.g. the same init_from run, the same seed)."""
    for m, entry in cached.items():
        if m in model.encoders and weights_sha256(model.encoders[m]) != entry["weights_sha256"]:
            raise ConfigError(
                f"data.features: the features of {m!r} were computed by an encoder with other "
                "weights than this run's (another train.init_from, seed or pretrained file); "
                "extract them again with this config"
            )


def check_cached_encoder(modality: str, cached: dict[str, Any], exp: ExperimentConfig) -> None:
    """ConfigError unless the model's encoder for `modality` is frozen and is the one (same
    config, same published weights, same input noise) whose outputs were cached."""
    cfg = exp.model
    if noise_of(exp.data) != cached["noise"]:
        raise ConfigError(
            f"data noise {noise_of(exp.data)} differs from the noise the cached {modality!r} "
            f"features were computed with ({cached['noise']}); they hold one fixed draw"
        )
    if modality not in cfg.frozen:
        raise ConfigError(
            f"model.frozen must include {modality!r}: data.features holds its encoder's outputs, "
            "so that encoder cannot train"
        )
    if encoder_spec(cfg, modality) != cached["encoder"]:
        raise ConfigError(
            f"model.encoders.{modality} differs from the encoder whose features were cached "
            f"({cached['encoder']})"
        )
    if dict(cfg.pretrained).get(modality, "") != cached["pretrained"]:
        raise ConfigError(
            f"model.pretrained.{modality} differs from the cached features' "
            f"({cached['pretrained']!r})"
        )
