"""Fine-tuning from a pretraining run: train.init_from copies the named modules exactly."""

import shutil

import jax
import numpy as np
import pytest
from flax import nnx

import mmjax
from mmjax.config import experiment_from, set_value
from mmjax.errors import CheckpointError, ConfigError
from mmjax.experiments import avdigits_config
from mmjax.parallel import data_mesh
from mmjax.train.state import init_state
from mmjax.train.warm_start import COPIED, initial_weights, warm_start
from mmjax.train.workdir import read_experiment, restore_trained


def _config(avdigits_root, name: str, **values):
    cfg = mmjax.load_config_file(f"configs/{name}.py:tiny")
    set_value(cfg, "data.root", str(avdigits_root))
    set_value(cfg, "train.steps", 10)
    set_value(cfg, "train.eval_splits", ("test",))
    for key, value in values.items():
        set_value(cfg, key.replace("__", "."), value)
    return cfg


@pytest.fixture(scope="module")
def pretrained(avdigits_root, tmp_path_factory):
    """A short reconstruction-pretraining run of the conv autoencoder."""
    workdir = tmp_path_factory.mktemp("autoencoder")
    cfg = _config(avdigits_root, "avdigits_audio_autoencoder")
    assert mmjax.train(cfg, workdir, progress=False)["completed"]
    return workdir


def _flat(module: nnx.Module) -> dict:
    return dict(nnx.to_flat_state(jax.device_get(nnx.state(module, COPIED))))


def test_copies_the_named_modules_and_nothing_else(avdigits_root, pretrained):
    cfg = _config(avdigits_root, "avdigits_audio_finetune", train__init_from=str(pretrained))
    exp = experiment_from(cfg.to_dict())
    mesh = data_mesh()
    graphdef, fresh = init_state(exp, mesh)
    model = nnx.merge(graphdef, warm_start(graphdef, fresh, exp, mesh))[0]
    fresh_model = nnx.merge(graphdef, fresh)[0]
    source_exp = experiment_from(read_experiment(pretrained)["config"])
    _, source_graphdef, source_state = restore_trained(pretrained, source_exp, mesh)
    source = nnx.merge(source_graphdef, source_state)[0]

    copied, expected = _flat(model.encoders["audio"]), _flat(source.encoders["audio"])
    assert copied.keys() == expected.keys()
    assert any("mean" in "/".join(map(str, k)) for k in copied)  # batch statistics came too
    for key in expected:
        np.testing.assert_array_equal(copied[key], expected[key], err_msg=str(key))
    for key, value in _flat(fresh_model.head).items():  # the classifier starts fresh
        np.testing.assert_array_equal(_flat(model.head)[key], value)


def test_fine_tuning_trains_and_resumes_without_reloading(avdigits_root, pretrained, tmp_path):
    source = tmp_path / "pretrained"
    shutil.copytree(pretrained, source)
    cfg = _config(avdigits_root, "avdigits_audio_finetune", train__init_from=str(source))
    run = tmp_path / "run"
    first = mmjax.train(cfg, run, stop_after=5, progress=False)
    assert first["steps"] == 5 and not first["completed"]
    # The resume reads only its own checkpoint: with the warm-start source gone, reloading it
    # would fail.
    shutil.rmtree(source)
    resumed = mmjax.train(cfg, run, progress=False)
    assert resumed["completed"] and resumed["started_at_step"] == 5
    assert resumed["steps_this_call"] == resumed["steps"] - 5


def test_mismatched_and_unknown_modules_are_config_errors(avdigits_root, pretrained, tmp_path):
    mesh = data_mesh()
    cnn_lstm = _config(avdigits_root, "avdigits_audio", train__init_from=str(pretrained))
    set_value(cnn_lstm, "train.init_modules", ("encoders.audio",))
    unknown = _config(
        avdigits_root,
        "avdigits_audio_finetune",
        train__init_from=str(pretrained),
        train__init_modules=("encoders.video",),
    )
    for cfg, message in [(cnn_lstm, "does not fit"), (unknown, "'encoders.video' is not")]:
        exp = experiment_from(cfg.to_dict())
        graphdef, state = init_state(exp, mesh)
        with pytest.raises(ConfigError, match=message):
            warm_start(graphdef, state, exp, mesh)
    nowhere = _config(
        avdigits_root, "avdigits_audio_finetune", train__init_from=str(tmp_path / "none")
    )
    with pytest.raises(CheckpointError, match="not an mmjax workdir"):
        mmjax.train(nowhere, tmp_path / "run", progress=False)
    empty = _config(avdigits_root, "avdigits_audio_finetune", train__init_from="runs/x")
    set_value(empty, "train.init_modules", ())
    with pytest.raises(ConfigError, match="init_modules"):
        experiment_from(empty.to_dict())


def test_init_from_may_not_overwrite_a_pretrained_encoder():
    config = avdigits_config("avdigits_late", "tiny").to_dict()
    config["model"] = mmjax.MODELS.get("efficientnet_minilm_late")()
    config["model"]["pretrained"]["text"] = "minilm-l6"
    config["train"]["init_from"] = "runs/anything"
    exp = experiment_from(config)
    model = mmjax.create_model("avdigits_image")  # refused before any weight is read
    with pytest.raises(ConfigError, match=r"model\.pretrained\.text already loads"):
        initial_weights(model, exp, data_mesh())
