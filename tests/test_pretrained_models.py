"""model.pretrained: registered models start encoders from published weights, through
create_model and through a fresh training run; mismatches are config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mmjax
from mmjax.config import experiment_from
from mmjax.experiments import avdigits_config
from mmjax.models import build_model
from mmjax.parallel import data_mesh
from mmjax.pretrained import catalog
from mmjax.train.state import init_state
from mmjax.train.warm_start import warm_start


def _file(name: str) -> dict[str, np.ndarray]:
    spec = catalog.entry(name)
    return spec.read(catalog.weight_file(spec))


def test_create_model_places_both_encoders():
    model = mmjax.create_model(
        "efficientnet_minilm_late", pretrained={"image": "efficientnet-lite0", "text": "minilm-l6"}
    )
    text, image = _file("minilm-l6"), _file("efficientnet-lite0")
    np.testing.assert_array_equal(
        model.encoders["text"].embeddings.word.embedding[...],
        text["embeddings.word_embeddings.weight"],
    )
    np.testing.assert_array_equal(
        model.encoders["image"].blocks[15].depthwise.norm.var[...],
        image["_blocks.15._bn1.running_var"],
    )
    np.testing.assert_array_equal(
        model.encoders["image"].head.conv.kernel[...],
        image["_conv_head.weight"].transpose(2, 3, 1, 0),
    )


def test_the_rest_is_initialised_as_a_fresh_model_is():
    """create_model fills what no file gave (here: the fusion head, the classifier and the RNG
    state) with the values an eager build has: nothing is left abstract or drawn differently."""
    model = mmjax.create_model("avdigits_late", seed=3, pretrained={})
    cfg = mmjax.model_config_from(mmjax.config.ConfigDict(mmjax.MODELS.get("avdigits_late")()))
    fresh = build_model(cfg, rngs=nnx.Rngs(3))
    ours, theirs = (nnx.to_flat_state(nnx.state(m)) for m in (model, fresh))
    assert [path for path, _ in ours] == [path for path, _ in theirs]
    for (path, a), (_, b) in zip(ours, theirs, strict=True):
        assert isinstance(a.get_value(), jax.Array), path
        np.testing.assert_array_equal(_data(a.get_value()), _data(b.get_value()), err_msg=path)


def _data(x: jax.Array) -> jax.Array:
    """The array itself, or a PRNG key's raw bits."""
    return jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x


def test_a_fresh_run_starts_from_the_published_weights():
    config = avdigits_config("avdigits_late", "tiny").to_dict()
    config["model"] = mmjax.MODELS.get("efficientnet_minilm_late")()
    config["model"]["pretrained"] = {"image": "", "text": "minilm-l6"}
    exp = experiment_from(config)
    mesh = data_mesh()
    graphdef, state = init_state(exp, mesh)
    model = nnx.merge(graphdef, warm_start(graphdef, state, exp, mesh))[0]
    layer = model.encoders["text"].layers[5].output
    weights = _file("minilm-l6")
    np.testing.assert_array_equal(
        jax.device_get(layer.kernel[...]), weights["encoder.layer.5.output.dense.weight"].T
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"pretrained.image": "minilm-l6"}, "'minilm-l6' is a text_transformer encoder"),
        ({"encoders.text.hidden": 256, "pretrained.text": "minilm-l6"}, "needs 384"),
        ({"pretrained.image": "resnet-9000"}, "unknown pretrained encoder 'resnet-9000'"),
    ],
)
def test_mismatches_are_config_errors(overrides, message):
    with pytest.raises(mmjax.ConfigError, match=message):
        mmjax.create_model("efficientnet_minilm_late", **overrides)


def test_weights_must_fit_the_dataset(avdigits_root, tmp_path):
    """Resemblyzer's 16 kHz speaker encoder on AV-Digits' 8 kHz audio is refused."""
    config = avdigits_config("avdigits_audio", "tiny").to_dict()
    config["data"]["root"] = str(avdigits_root)
    config["model"]["encoders"]["audio"] = {"name": "speaker_lstm"}
    config["model"]["pretrained"] = {"audio": "resemblyzer"}
    with pytest.raises(mmjax.ConfigError, match="expects 16000 Hz audio"):
        mmjax.train(config, tmp_path, progress=False)
