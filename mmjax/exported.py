"""Run a model that `mmjax export` wrote, with only jax and numpy: no flax, no model code.

The artifact is a zip file: `exported.bin` (the inference function serialised by
`jax.export`, with a symbolic batch dimension), `weights.npz` (its parameters, in order) and
`meta.json` (format, class names, the inputs it takes, the platforms it was lowered for, how
the training data was prepared, and the sha256 of the two binary members). This module must
import nothing from mmjax but its errors, so that it runs where the library's model code
(and flax) is not installed.
"""

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax import export

from mmjax.errors import CheckpointError, InputError

FORMAT = "mmjax-export/1"
MEMBERS = ("meta.json", "exported.bin", "weights.npz")
# jax.default_backend() -> the platform names jax.export lowers for.
BACKEND_PLATFORMS = {"cpu": ("cpu",), "gpu": ("cuda", "rocm"), "tpu": ("tpu",)}


class ExportedModel:
    """An exported classifier: `predict_proba(inputs)` -> probabilities [B, C], `predict`
    -> class names; `inputs` is a dict of batched arrays keyed like the training batches
    (`image` [B, H, W, C] float in [0, 1], `audio` [B, L] float, `text` [B, L] int ids with
    `text.attention_mask` [B, L] bool, `<m>_mask` [B] bool for a present modality). A modality
    left out is missing for every sample. `preprocessing` describes how the training data was
    prepared (the dataset's description: tokenizer, sample rate, image size)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        members = _read_members(self.path)
        try:
            meta = json.loads(members["meta.json"])
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
            for name in MEMBERS[1:]:
                if hashlib.sha256(members[name]).hexdigest() != meta["sha256"][name]:
                    raise ValueError(f"{name} does not match its sha256 in meta.json")
            self._exported = export.deserialize(bytearray(members["exported.bin"]))
            weights = np.load(io.BytesIO(members["weights.npz"]))
            self._weights = [weights[f"w{i:05d}"] for i in range(meta["weights"])]
        except (ValueError, KeyError, TypeError, OSError) as err:
            raise CheckpointError(
                f"{self.path} is not a readable mmjax export ({err}); export the model again"
            ) from None
        self.meta = meta
        self.class_names: list[str] = meta["class_names"]
        self.modalities: list[str] = meta["modalities"]
        self.inputs: dict[str, dict[str, Any]] = meta["inputs"]
        self.preprocessing: dict[str, Any] = meta["preprocessing"]
        backend = jax.default_backend()
        if not set(BACKEND_PLATFORMS.get(backend, (backend,))) & set(meta["platforms"]):
            raise CheckpointError(
                f"{self.path} was exported for {', '.join(meta['platforms'])} only, and this "
                f"process runs on {backend}: export it again with --platforms including "
                f"{BACKEND_PLATFORMS.get(backend, (backend,))[0]}"
            )

    def predict_proba(self, inputs: dict[str, Any]) -> np.ndarray:
        """Class probabilities [B, C] for the batched `inputs` (see the class docstring)."""
        batch = self._complete(inputs)
        return np.asarray(self._exported.call(self._weights, batch))

    def predict(self, inputs: dict[str, Any]) -> list[str]:
        """The most probable class's name per sample."""
        return [self.class_names[k] for k in self.predict_proba(inputs).argmax(-1)]

    def _complete(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        unknown = sorted(set(inputs) - set(self.inputs))
        if unknown:
            raise InputError(
                f"inputs {unknown} are not inputs of this model: {sorted(self.inputs)}"
            )
        given = {k: np.asarray(v) for k, v in inputs.items()}
        sizes = {v.shape[0] for v in given.values() if v.ndim}
        if len(sizes) != 1:
            raise InputError(f"the inputs need one batch size on their first axis, got {sizes}")
        (size,) = sizes
        batch = {}
        for key, spec in self.inputs.items():
            shape, dtype = (size, *spec["shape"]), np.dtype(spec["dtype"])
            if key in given:
                value = given[key]
            elif key.endswith("_mask") and key[: -len("_mask")] in self.modalities:
                value = np.full(size, key[: -len("_mask")] in given)  # present iff given
            else:
                modality = key.split(".")[0]
                if modality in given:
                    raise InputError(f"inputs[{key!r}] is needed with {modality!r}")
                value = np.zeros(shape, dtype)  # a missing modality's placeholder
            if value.shape != shape or not np.can_cast(value.dtype, dtype, "same_kind"):
                raise InputError(
                    f"inputs[{key!r}]: expected {dtype} {shape}, got {value.dtype} {value.shape}"
                )
            batch[key] = value.astype(dtype)
        return batch


def load_exported(path: str | Path) -> ExportedModel:
    """The model `mmjax export` wrote to `path`, ready to run with only jax and numpy."""
    return ExportedModel(path)


def _read_members(path: Path) -> dict[str, bytes]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such exported model")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = [m for m in MEMBERS if m not in names]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            return {name: archive.read(name) for name in MEMBERS}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise CheckpointError(
            f"{path} is not a readable mmjax export (truncated or corrupted: {err}); export "
            "the model again"
        ) from None
