"""Configs: every shipped config is valid; every mistake names the key and what is valid."""

from pathlib import Path

import pytest

import mmjax
from mmjax.config import apply_overrides, experiment_from, load_config_file

CONFIGS = sorted(str(p) for p in Path("configs").glob("*.py"))


def test_configs_exist():
    assert len(CONFIGS) >= 4


@pytest.mark.parametrize("path", CONFIGS)
@pytest.mark.parametrize("arg", ["", ":tiny"])
def test_shipped_config_is_valid(path, arg):
    exp = experiment_from(load_config_file(path + arg))
    assert exp.model.num_classes == {"avdigits": 10, "emoji": 9}[exp.data.name]
    assert exp.train.batch_size % 4 == 0


def test_overrides_are_typed():
    cfg = apply_overrides(
        load_config_file("configs/avdigits_late.py"),
        [
            "train.steps=7",
            "optim.learning_rate=1e-2",
            "data.root=/tmp/x",
            "train.eval_splits=test,val",
            "model.fusion.hidden=32",
            "model.encoders.image.channels=(8, 16)",
        ],
    )
    exp = experiment_from(cfg)
    assert exp.train.steps == 7 and exp.optim.learning_rate == 0.01
    assert exp.data.root == "/tmp/x" and exp.train.eval_splits == ("test", "val")
    assert exp.model.fusion.cfg.hidden == 32
    assert dict(exp.model.encoders)["image"].cfg.channels == (8, 16)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        (
            "train.setps=3",
            r"unknown config key 'train.setps' \(did you mean 'steps'\?\); "
            r"valid keys under train: .*batch_size",
        ),
        ("trian.steps=3", r"unknown config key 'trian' \(did you mean 'train'\?\)"),
        ("train.steps=many", r"config key 'train.steps' expects type int .*got 'many'"),
        ("train.steps=1.5", r"config key 'train.steps' expects type int"),
        ("train", r"--set expects path.to.key=value"),
        ("train.keep_checkpoints=0", r"config key 'train.keep_checkpoints' must be >= 1"),
        ("train.checkpoint_every=0", r"config key 'train.checkpoint_every' must be >= 1"),
        ("data.modality_dropout=1.5", r"config key 'data.modality_dropout' must be in \[0, 1\)"),
        ("optim.learning_rate=0", r"config key 'optim.learning_rate' must be > 0"),
        ("train=3", r"config key 'train' is a section"),
    ],
)
def test_bad_override_names_the_key(override, match):
    with pytest.raises(mmjax.ConfigError, match=match):
        experiment_from(apply_overrides(load_config_file("configs/avdigits_late.py"), [override]))


def test_unknown_component_lists_choices():
    cfg = load_config_file("configs/avdigits_late.py")
    apply_overrides(cfg, ["model.fusion.name=late_concatt"])
    with pytest.raises(
        mmjax.ConfigError,
        match=r"model.fusion.name: unknown fusion 'late_concatt'; registered: .*late_concat",
    ):
        experiment_from(cfg)


def test_field_of_another_component_is_rejected():
    cfg = load_config_file("configs/avdigits_late.py")
    apply_overrides(cfg, ["model.encoders.image.name=resnet18"])
    with pytest.raises(
        mmjax.ConfigError,
        match=r"unknown config key 'model.encoders.image.channels'.*"
        r"valid keys under model.encoders.image: in_channels, stem, width",
    ):
        experiment_from(cfg)


def test_missing_config_file_and_bad_arg():
    with pytest.raises(mmjax.ConfigError, match="does not exist"):
        load_config_file("configs/nope.py")
    with pytest.raises(mmjax.ConfigError, match="unknown config argument 'huge'"):
        load_config_file("configs/avdigits_late.py:huge")


def test_create_model_overrides():
    model = mmjax.create_model(
        "avdigits_late", **{"fusion.hidden": 32}, encoders={"audio": {"hidden": 16}}
    )
    assert model.fusion.dim == 32 and model.encoders["audio"].dim == 16
    with pytest.raises(mmjax.ConfigError, match="unknown model 'nope'; registered: avdigits_audio"):
        mmjax.create_model("nope")
    with pytest.raises(mmjax.ConfigError, match=r"unknown config key 'fusion\.hiden'"):
        mmjax.create_model("avdigits_late", **{"fusion.hiden": 32})
    assert (
        mmjax.list_models() == sorted(mmjax.list_models())
        and "avdigits_late" in mmjax.list_models()
    )
