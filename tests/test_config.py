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
    assert exp.model.num_classes == {"avdigits": 10, "emoji": 9, "product-clips": 10}[exp.data.name]
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


def test_a_component_is_swapped_by_name():
    cfg = load_config_file("configs/avdigits_late.py")
    apply_overrides(cfg, ["model.fusion=cnn_rnn", "model.fusion.width=32"])
    apply_overrides(cfg, ["model.encoders.image=resnet18", "model.encoders.image.in_channels=1"])
    exp = experiment_from(cfg)
    assert exp.model.fusion.name == "cnn_rnn" and exp.model.fusion.cfg.width == 32
    assert exp.model.fusion.cfg.steps == 8  # the head's own defaults
    assert dict(exp.model.encoders)["image"].name == "resnet18"
    with pytest.raises(mmjax.ConfigError, match=r"model.fusion=nope: unknown fusion 'nope'"):
        apply_overrides(cfg, ["model.fusion=nope"])
    with pytest.raises(mmjax.ConfigError, match=r"config key 'optim' is a section"):
        apply_overrides(cfg, ["optim=adam"])


def _video_model(**video):
    section = {"name": "video", "frame_encoder": "efficientnet_lite0", "temporal": "mean"}
    return {
        "encoders": {"video": section | video},
        "fusion": {"name": "late_concat"},
        "num_classes": 3,
        "pretrained": {"video": "efficientnet-lite0"},
        "frozen": ("video",),
    }


def test_catalog_image_weights_fit_a_video_encoders_frames():
    assert mmjax.model_config_from(_video_model()).pretrained == (("video", "efficientnet-lite0"),)
    with pytest.raises(
        mmjax.ConfigError,
        match=r"'efficientnet-lite0' is a efficientnet_lite0 encoder, but model.encoders.video "
        r"is video \(a video encoder takes it with frame_encoder=efficientnet_lite0\)",
    ):
        mmjax.model_config_from(_video_model(frame_encoder="small_cnn"))
    with pytest.raises(
        mmjax.ConfigError,
        match=r"model.encoders.video.temporal' is 'lstm', but the video encoder is frozen",
    ):
        mmjax.model_config_from(_video_model(temporal="lstm"))


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
