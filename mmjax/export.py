"""`mmjax export`: a trained model's inference function as a `jax.export` artifact, which
`mmjax.load_exported` runs with only jax and numpy (`mmjax/exported.py` reads it)."""

import hashlib
import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from mmjax.batch_keys import attention_key, presence_key
from mmjax.errors import ConfigError
from mmjax.exported import FORMAT
from mmjax.folders import output_folder
from mmjax.models.multimodal import MODALITY_KINDS
from mmjax.predict import Predictor

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def input_spec(predictor: Predictor) -> dict[str, dict[str, object]]:
    """{batch key: {"shape": per-sample shape, "dtype"}} of what the model takes: each
    modality's input, its presence mask and, for text, its attention mask."""
    spec: dict[str, dict[str, object]] = {}
    for m in predictor.modalities:
        shape = list(predictor.sample_shapes[m])
        text = MODALITY_KINDS[m] == "iu"
        spec[m] = {"shape": shape, "dtype": "int32" if text else "float32"}
        if text:
            spec[attention_key(m)] = {"shape": shape, "dtype": "bool"}
        spec[presence_key(m)] = {"shape": [], "dtype": "bool"}
    return spec


def export_model(
    predictor: Predictor, out: str | Path, *, platforms: Sequence[str] = ("cpu",)
) -> Path:
    """Write `predictor`'s softmax over its classifier as a `jax.export` artifact at `out`
    (one batch size symbolic, lowered for each of `platforms`); return the path."""
    unknown = [p for p in platforms if p not in PLATFORMS]
    if unknown or not platforms:
        raise ConfigError(f"--platforms {','.join(platforms)}: each one of {', '.join(PLATFORMS)}")
    if predictor.experiment.model.classification_weight == 0:
        raise ConfigError("this model trained no classifier (model.classification_weight is 0)")
    out = Path(out)
    output_folder(out.absolute().parent, "--out")
    graphdef, state = nnx.split(predictor.model)
    leaves, treedef = jax.tree.flatten(state)
    # Random-key leaves (RNG state) travel as their raw data and are rebuilt inside.
    impls = [
        jax.random.key_impl(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else None
        for x in leaves
    ]
    leaves = [np.asarray(jax.random.key_data(x) if i else x) for x, i in zip(leaves, impls)]

    def infer(weights: list[jax.Array], batch: dict[str, jax.Array]) -> jax.Array:
        weights = [jax.random.wrap_key_data(w, impl=i) if i else w for w, i in zip(weights, impls)]
        model = nnx.merge(graphdef, jax.tree.unflatten(treedef, weights))
        return jax.nn.softmax(model(batch, train=False))

    spec = input_spec(predictor)
    (batch,) = jax.export.symbolic_shape("batch")
    batch_spec = {
        k: jax.ShapeDtypeStruct((batch, *s["shape"]), np.dtype(s["dtype"])) for k, s in spec.items()
    }
    weight_spec = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
    exported = jax.export.export(jax.jit(infer), platforms=tuple(platforms))(
        weight_spec, batch_spec
    )
    members = {"exported.bin": bytes(exported.serialize())}
    buffer = io.BytesIO()
    np.savez(buffer, **{f"w{i:05d}": x for i, x in enumerate(leaves)})
    members["weights.npz"] = buffer.getvalue()
    meta = {
        "format": FORMAT,
        "class_names": predictor.class_names,
        "modalities": list(predictor.modalities),
        "inputs": spec,
        "preprocessing": predictor.dataset,
        "platforms": list(exported.platforms),
        "step": predictor.step,
        "weights": len(leaves),
        "sha256": {k: hashlib.sha256(v).hexdigest() for k, v in members.items()},
    }
    partial = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(partial, "w") as archive:
        archive.writestr("meta.json", json.dumps(meta, indent=2))
        for name, data in members.items():
            archive.writestr(name, data)
    partial.replace(out)
    return out
