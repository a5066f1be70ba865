"""model.frozen: a frozen encoder keeps its weights and batch statistics, and has no
optimizer state; the rest of the model trains."""

import jax
import numpy as np
import pytest
from flax import nnx

from mmjax.config import experiment_from
from mmjax.errors import ConfigError
from mmjax.experiments import avdigits_config
from mmjax.parallel import data_mesh, put_batch
from mmjax.train.state import init_state, state_shardings
from mmjax.train.step import make_train_step


def _experiment(frozen):
    config = avdigits_config("avdigits_late", "tiny").to_dict()
    config["model"]["encoders"]["audio"] = {"name": "audio_frames", "stride": 8, "dim": 16}
    config["model"]["frozen"] = frozen
    config["train"]["batch_size"] = 8
    config["optim"].update(warmup_steps=0)
    return experiment_from(config)


def _batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "image": rng.random((8, 8, 8, 1), np.float32),
        "audio": rng.standard_normal((8, 2000)).astype(np.float32),
        "label": rng.integers(0, 10, 8).astype(np.int32),
    }


def _encoder_leaves(state, modality: str) -> dict:
    model = nnx.merge(*state)[0]
    encoder = model.encoders[modality]
    return dict(nnx.to_flat_state(jax.device_get(nnx.state(encoder, (nnx.Param, nnx.BatchStat)))))


def test_frozen_encoder_is_untouched_and_has_no_optimizer_state():
    mesh = data_mesh()
    graphdef, state = init_state(_experiment(["image"]), mesh)
    before = {m: _encoder_leaves((graphdef, state), m) for m in ("image", "audio")}
    step = make_train_step(graphdef, state_shardings(state, mesh), mesh)
    for _ in range(2):
        state, _ = step(state, put_batch(_batch(), mesh))
    after = {m: _encoder_leaves((graphdef, state), m) for m in ("image", "audio")}
    for key, value in before["image"].items():  # weights and BN running statistics
        np.testing.assert_array_equal(after["image"][key], value, err_msg=str(key))
    assert any(not np.array_equal(after["audio"][k], v) for k, v in before["audio"].items())

    _, optimizer = nnx.merge(graphdef, state)
    paths = ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(optimizer.opt_state))]
    assert not any("encoders/image" in p for p in paths)
    assert any("encoders/audio" in p for p in paths)


def test_frozen_names_must_be_modalities():
    with pytest.raises(ConfigError, match=r"model.frozen.*'video'"):
        _experiment(["video"])
