"""The public API, loaded by `mmjax/__init__.py` on first use of any of its names: every import
here is a re-export (and registers the built-in components and datasets)."""

# ruff: noqa: F401

from typing import Any

from flax import nnx

from mmjax import models as _models  # registers the built-in components
from mmjax.config import ConfigDict, load_config_file, model_config_from, set_value
from mmjax.data.builders import avdigits as _avdigits  # registers AV-Digits
from mmjax.data.builders import emoji as _emoji  # registers emoji
from mmjax.data.builders import product_clips as _product_clips  # registers it
from mmjax.errors import CheckpointError, ConfigError, DataError, InputError, MmjaxError
from mmjax.models import MultimodalModel, build_model
from mmjax.models.layers import fill_abstract
from mmjax.predict import Predictor, load_predictor
from mmjax.pretrained import CATALOG, load_encoder, place_pretrained
from mmjax.progress import log_to_stderr
from mmjax.publish import PretrainedModel, load_pretrained, published_names, save_pretrained
from mmjax.registry import DATASETS, ENCODERS, FUSIONS, MODELS
from mmjax.train.loop import evaluate_workdir, train
from mmjax.train.sweep import sweep


def list_models() -> list[str]:
    """Names accepted by `create_model`."""
    return MODELS.names()


def create_model(name: str, *, seed: int = 0, **overrides: Any) -> MultimodalModel:
    """Build registered model `name`; overrides are dotted keys or sections of its config,
    e.g. `create_model("avdigits_late", **{"fusion.hidden": 256})`, or
    `pretrained={"text": "minilm-l6"}` to start encoders from published weights."""
    section = ConfigDict(MODELS.get(name)())
    section.lock()
    for key, value in overrides.items():
        set_value(section, key, value)
    cfg = model_config_from(section)
    factory = lambda: build_model(cfg, rngs=nnx.Rngs(seed))
    model = nnx.eval_shape(factory)
    place_pretrained(model, cfg)
    fill_abstract(model, factory)  # what no published weights gave, as jit_init would
    return model


def fit(
    data: str,
    workdir: str,
    *,
    fusion: str = "late_concat",
    data_dir: str = "",
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a model chosen for dataset `data` (`mmjax train --data`): encoders picked from its
    shapes, `fusion` as the head, the choice written to `workdir/config.py`; `overrides` are
    dotted config keys, e.g. {"train.steps": 500}. Returns the results dict."""
    from mmjax.auto_config import choose

    config = choose(data, workdir, fusion=fusion, root=data_dir, overrides=overrides)
    return train(config, workdir, progress=progress)
