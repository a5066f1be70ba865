"""`mmjax features extract`: run a model's frozen encoders once over a dataset and store their
outputs, so training the rest of the model can skip them (see data/features_store.py)."""

import functools
import json
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from mmjax.batch_keys import attention_key, cached_keys
from mmjax.compile_options import model_compiler_options
from mmjax.config import ConfigDict, as_json_dict, experiment_from
from mmjax.data import features_store, sources
from mmjax.data.pipeline import EVAL_NOISE_SEED
from mmjax.data.records import decode_record, write_shards
from mmjax.data.transforms import AddNoise, Decode
from mmjax.errors import ConfigError
from mmjax.models import build_model
from mmjax.models.layers import jit_init
from mmjax.parallel import data_mesh
from mmjax.train.warm_start import initial_weights


def extract(
    config: ConfigDict | dict[str, Any],
    out_dir: str | Path,
    *,
    splits: tuple[str, ...] = (),
    batch_size: int = 100,
) -> dict[str, Any]:
    """Write the Features of every frozen encoder of `config`'s model, for every record of
    `splits` (default: all), to `out_dir`; return its info. Inputs get the dataset's noise
    once, drawn from a fixed per-record seed, as evaluation does."""
    exp = experiment_from(as_json_dict(config))
    cached = exp.model.frozen
    if not cached:
        raise ConfigError("model.frozen: name the encoders whose outputs to cache")
    if exp.data.features:
        raise ConfigError("data.features: extract from the dataset itself, not from features")
    out = Path(out_dir).absolute()
    if out.exists():
        raise ConfigError(f"--out {out} exists; choose a new directory (nothing was changed)")
    source = sources.open_source(exp.data)
    source.verify()
    info = source.info
    splits = splits or tuple(info["splits"])
    unknown = [s for s in splits if s not in info["splits"]]
    if unknown:
        raise ConfigError(f"--split {unknown}: the dataset has {', '.join(info['splits'])}")
    started = time.perf_counter()
    model = jit_init(lambda: build_model(exp.model, rngs=nnx.Rngs(exp.train.seed)))
    initial_weights(model, exp, data_mesh(jax.devices()[:1]))  # as a fresh run starts
    encode = _encoder_fn(model, cached)
    decode = Decode(cached)
    noise = AddNoise(exp.data.image_noise, exp.data.audio_snr_db)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    new_splits = {}
    for split in splits:
        split_source = source.open_split(split)
        records = _split_records(split_source, decode, noise, encode, cached, batch_size)
        shards = write_shards(records, staging, split)
        new_splits[split] = {"num_records": len(split_source), "shards": shards}
    new_info = info | {
        "kind": "features",  # not the dataset's own kind (an import's, say)
        "splits": new_splits,
        "cached": {
            m: {
                "encoder": features_store.encoder_spec(exp.model, m),
                "pretrained": dict(exp.model.pretrained).get(m, ""),
                "weights_sha256": features_store.weights_sha256(model.encoders[m]),
                "noise": features_store.noise_of(exp.data),
            }
            for m in cached
        },
        "source": source.build_checksums(),
        "extract_seconds": round(time.perf_counter() - started, 2),
    }
    vocab_file = info.get("text_vocab", {}).get("file")
    if vocab_file:  # an imported dataset's words vocabulary, which predictions tokenise with
        shutil.copy2(source.directory / vocab_file, staging / vocab_file)
    (staging / features_store.INFO).write_text(json.dumps(new_info, indent=2))
    staging.rename(out)
    return new_info


def _encoder_fn(model: nnx.Module, modalities: tuple[str, ...]):
    """batch {m: input [B, ...], and for text m its attention mask [B, L]} -> {m: Features
    as a (tokens, token_mask, pooled) tuple of host arrays} for each of `modalities`."""
    graphdef, state = nnx.split(model)

    @functools.partial(jax.jit, compiler_options=model_compiler_options())
    def encode(state: nnx.State, batch: dict[str, jax.Array]) -> dict[str, tuple]:
        model = nnx.merge(graphdef, state)
        return {m: tuple(_encode_one(model.encoders[m], m, batch)) for m in modalities}

    return lambda batch: jax.device_get(encode(state, batch))


def _encode_one(encoder: nnx.Module, m: str, batch: dict[str, jax.Array]) -> tuple:
    """`encoder` on batch[m] in inference mode, with m's attention mask when the batch has it."""
    if attention_key(m) in batch:
        return encoder(batch[m], train=False, mask=batch[attention_key(m)])
    return encoder(batch[m], train=False)


def _input_keys(modalities: tuple[str, ...]) -> set[str]:
    """The record and batch keys that the cached Features of `modalities` replace: each input
    and, for text, its attention mask."""
    return set(modalities) | {attention_key(m) for m in modalities}


def _split_records(source, decode, noise, encode, cached, batch_size):
    """The split's records in order, each with its cached modalities' Features in place of
    their inputs (and attention masks)."""
    consumed = _input_keys(cached)
    for start in range(0, len(source), batch_size):
        indices = range(start, min(start + batch_size, len(source)))
        raws = [source[i] for i in indices]
        inputs = [
            noise.random_map(decode.map(raw), np.random.default_rng([EVAL_NOISE_SEED, i]))
            for raw, i in zip(raws, indices, strict=True)
        ]
        features = encode({k: np.stack([x[k] for x in inputs]) for k in inputs[0] if k in consumed})
        for row, raw in enumerate(raws):
            record = {k: v for k, v in decode_record(raw).items() if k not in consumed}
            for m in cached:
                for key, value in zip(cached_keys(m), features[m], strict=True):
                    record[key] = np.asarray(value[row])
            yield record
