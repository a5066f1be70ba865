"""Cached encoder outputs: `mmjax features extract` and training on them skip frozen encoders
and compute exactly what the encoders would have."""

import shutil

import numpy as np
import pytest
from flax import nnx

import mmjax
from mmjax.config import experiment_from, set_value
from mmjax.data import pipeline
from mmjax.data.features_store import check_cached_weights, weights_sha256
from mmjax.data.records import decode_record, encode_record
from mmjax.data.transforms import AddNoise, Decode
from mmjax.errors import ConfigError, DataError, InputError
from mmjax.features import _encode_one, _split_records, extract
from mmjax.models import build_model, validate_batch
from mmjax.models.layers import jit_init
from mmjax.pretrained import place_pretrained


def _config(emoji_root, **values):
    cfg = mmjax.load_config_file("configs/emoji_clip.py:tiny")
    set_value(cfg, "data.root", str(emoji_root))
    for key, value in values.items():
        set_value(cfg, key.replace("__", "."), value)
    return cfg


@pytest.fixture(scope="module")
def features(emoji_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("features") / "emoji_text"
    info = extract(_config(emoji_root), out, splits=("train", "test"))
    assert set(info["cached"]) == {"text"} and set(info["splits"]) == {"train", "test"}
    return out


def test_cached_features_equal_the_frozen_encoder(emoji_root, features):
    raw_cfg, cached_cfg = _config(emoji_root), _config(emoji_root, data__features=str(features))
    exp = experiment_from(raw_cfg.to_dict())
    model = jit_init(lambda: build_model(exp.model, rngs=nnx.Rngs(0)))
    place_pretrained(model, exp.model)
    modalities = exp.model.modalities
    raw, _ = next(pipeline.eval_batches(exp.data, modalities, "test", 8))
    cached, _ = next(
        pipeline.eval_batches(experiment_from(cached_cfg.to_dict()).data, modalities, "test", 8)
    )
    assert "text" not in cached and cached["text.tokens"].shape == (8, 16, 384)
    assert raw["text.attention_mask"].shape == (8, 16) and "text.attention_mask" not in cached
    np.testing.assert_array_equal(cached["text.token_mask"], raw["text.attention_mask"])
    np.testing.assert_array_equal(raw["label"], cached["label"])
    inputs = lambda b: {k: v for k, v in b.items() if k != "label"}
    (fused_raw, aux_raw), (fused_cached, aux_cached) = (
        model.forward(inputs(b), train=False) for b in (raw, cached)
    )
    np.testing.assert_allclose(fused_cached, fused_raw, atol=1e-5)
    np.testing.assert_allclose(aux_cached["contrastive"], aux_raw["contrastive"], atol=1e-5)


def test_training_on_cached_features(emoji_root, features, tmp_path):
    cfg = _config(emoji_root, data__features=str(features))
    results = mmjax.train(cfg, tmp_path, progress=False)
    assert results["completed"] and results["steps"] == 20


def test_mismatched_models_and_bad_stores_are_refused(emoji_root, features, tmp_path):
    unfrozen = _config(emoji_root, data__features=str(features), model__frozen=())
    with pytest.raises(ConfigError, match=r"model\.frozen must include 'text'"):
        mmjax.train(unfrozen, tmp_path / "a", progress=False)
    other = _config(emoji_root, data__features=str(features), model__pretrained__text="")
    with pytest.raises(ConfigError, match=r"model\.pretrained\.text differs"):
        mmjax.train(other, tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="exists"):
        extract(_config(emoji_root), features)
    with pytest.raises(ConfigError, match=r"model\.frozen"):
        extract(_config(emoji_root, model__frozen=()), tmp_path / "c")
    missing = _config(emoji_root, data__features=str(tmp_path / "nothing"))
    with pytest.raises(DataError, match="mmjax features extract"):
        mmjax.train(missing, tmp_path / "d", progress=False)


def test_a_changed_shard_is_detected(emoji_root, features, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(features, copy)
    shard = next(copy.glob("test.array_record-*"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="changed since it was written"):
        mmjax.train(_config(emoji_root, data__features=str(copy)), tmp_path / "e", progress=False)


def test_noise_other_than_the_stores_is_refused(emoji_root, features, tmp_path):
    noisy = _config(emoji_root, data__features=str(features), data__image_noise=0.1)
    with pytest.raises(ConfigError, match="noise"):
        mmjax.train(noisy, tmp_path, progress=False)


def test_weights_other_than_the_stores_are_refused():
    model = mmjax.create_model("avdigits_image")
    same = {"image": {"weights_sha256": weights_sha256(model.encoders["image"])}}
    check_cached_weights(same, model)
    other = mmjax.create_model("avdigits_image", seed=1)
    with pytest.raises(ConfigError, match="other weights"):
        check_cached_weights(same, other)


def test_batches_mixing_inputs_and_cached_features_are_refused():
    cached = {
        "text.tokens": np.zeros((2, 3, 4), np.float32),
        "text.token_mask": np.ones((2, 3), bool),
        "text.pooled": np.zeros((2, 4), np.float32),
    }
    validate_batch(cached, ("text",))
    with pytest.raises(InputError, match="either the input or its cached features"):
        validate_batch(cached | {"text": np.ones((2, 5), np.int32)}, ("text",))
    with pytest.raises(InputError, match="all of tokens, token_mask and pooled"):
        validate_batch({k: v for k, v in cached.items() if k != "text.pooled"}, ("text",))


def test_extraction_encodes_text_with_the_records_attention_mask():
    """A record whose text holds a real token of id 0 (a literal "[PAD]") is encoded under its
    stored mask, and its cached record keeps neither the ids nor the consumed mask."""
    cls = mmjax.ENCODERS.get("text_transformer")
    encoder = cls(
        cls.Config(vocab_size=50, hidden=8, layers=1, heads=2, intermediate=16), rngs=nnx.Rngs(0)
    )
    ids = np.array([5, 0, 7, 0], np.int32)
    mask = np.array([True, True, True, False])
    raw = encode_record(
        {"text": ids, "text.attention_mask": mask, "caption": np.array("x"), "label": np.array(0)}
    )
    seen = []

    def encode(batch):
        seen.append(sorted(batch))
        return {"text": tuple(np.asarray(x) for x in _encode_one(encoder, "text", batch))}

    decode, noise = Decode(("text",)), AddNoise(0.0, 100.0)
    (record,) = _split_records([raw], decode, noise, encode, ("text",), batch_size=4)
    assert seen == [["text", "text.attention_mask"]]
    assert set(record) == {"caption", "label", "text.tokens", "text.token_mask", "text.pooled"}
    np.testing.assert_array_equal(record["text.token_mask"], mask)
    expected = encoder(ids[None], train=False, mask=mask[None]).pooled[0]
    np.testing.assert_allclose(record["text.pooled"], expected, atol=1e-6)
    assert decode_record(raw)["text.attention_mask"].tolist() == mask.tolist()
