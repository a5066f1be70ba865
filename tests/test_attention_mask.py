"""Text attention masks: the tokenizer's mask travels as `text.attention_mask` from records
through Decode and validate_batch into the text encoders, so a token of id 0 that is text (a
literal "[PAD]") is not taken for padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax.batch_keys import attention_key
from mmjax.data.records import encode_record
from mmjax.data.transforms import Decode
from mmjax.errors import DataError, InputError
from mmjax.models import MultimodalModel, validate_batch
from mmjax.models.heads import Classifier
from mmjax.registry import ENCODERS, FUSIONS

KEY = attention_key("text")
TEXT_ENCODERS = sorted(n for n in ENCODERS.names() if ENCODERS.get(n).modality == "text")
TINY = {"vocab_size": 50, "embed_dim": 8, "hidden": 16, "layers": 1, "heads": 2}
TINY_FIELDS = {"intermediate": 32, "max_len": 16}
# Row 0 holds a real token of id 0 at position 1 (a literal "[PAD]"); row 1 is plain padding.
IDS = np.array([[5, 0, 7, 8, 0, 0], [5, 6, 7, 0, 0, 0]], np.int32)
MASK = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]], bool)


def _text_encoder(name: str) -> nnx.Module:
    cls = ENCODERS.get(name)
    fields = {f: v for f, v in (TINY | TINY_FIELDS).items() if f in cls.Config.__dataclass_fields__}
    return cls(cls.Config(**fields), rngs=nnx.Rngs(0))


def _model(name: str, frozen: tuple[str, ...] = ()) -> MultimodalModel:
    encoder = _text_encoder(name)
    fusion_cls = FUSIONS.get("late_concat")
    fusion = fusion_cls({"text": encoder.dim}, fusion_cls.Config(), rngs=nnx.Rngs(1))
    head = Classifier(fusion.dim, 3, rngs=nnx.Rngs(2))
    return MultimodalModel({"text": encoder}, fusion, head, frozen=frozen)


def test_every_text_encoder_is_checked():
    assert {"bilstm", "bigru", "text_transformer"} <= set(TEXT_ENCODERS)


@pytest.mark.parametrize("frozen", [(), ("text",)], ids=["trainable", "frozen"])
@pytest.mark.parametrize("name", TEXT_ENCODERS)
def test_the_batch_mask_reaches_the_encoder(name, frozen):
    """Only the row whose mask differs from `ids != 0` changes; the mask is the token mask."""
    model = _model(name, frozen)
    with_mask = {"text": jnp.asarray(IDS), KEY: jnp.asarray(MASK)}
    features, _ = model.encode(with_mask, train=False)
    fallback, _ = model.encode({"text": jnp.asarray(IDS)}, train=False)
    np.testing.assert_array_equal(features["text"].token_mask, MASK)
    np.testing.assert_array_equal(fallback["text"].token_mask, IDS != 0)
    pooled, pooled_fallback = features["text"].pooled, fallback["text"].pooled
    np.testing.assert_allclose(pooled[1], pooled_fallback[1], atol=1e-6)
    assert not np.allclose(pooled[0], pooled_fallback[0], atol=1e-4)
    graphdef, state = nnx.split(model)
    apply = jax.jit(lambda state, batch: nnx.merge(graphdef, state)(batch, train=False))
    logits = apply(state, with_mask)
    logits_fallback = apply(state, {"text": jnp.asarray(IDS)})
    np.testing.assert_allclose(logits[1], logits_fallback[1], atol=1e-5)
    assert not np.allclose(logits[0], logits_fallback[0], atol=1e-5)


def test_a_mask_equal_to_the_fallback_changes_nothing():
    model = _model("text_transformer")
    ids = jnp.asarray(IDS[1:])
    plain = model({"text": ids}, train=False)
    np.testing.assert_array_equal(model({"text": ids, KEY: ids != 0}, train=False), plain)


def test_validate_batch_accepts_a_good_mask_also_traced():
    batch = {"text": IDS, KEY: MASK, "label": np.array([0, 1])}
    validate_batch(batch, ("text",), sample_shapes={"text": (6,)})
    jax.jit(lambda b: validate_batch(b, ("text",)) or 0)(batch)  # static checks only


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({"text": IDS, KEY: MASK.astype(np.int32)}, r"text\.attention_mask: expected a bool"),
        ({"text": IDS, KEY: MASK[:, :5]}, r"text\.attention_mask: expected .* \(2, 6\)"),
        ({"text": IDS, KEY: MASK[:1]}, r"text\.attention_mask: expected .* \(2, 6\)"),
        ({"image": np.zeros((2, 4, 4, 3), np.float32), KEY: MASK}, r"its token ids 'text'"),
        (
            {
                "text.tokens": np.zeros((2, 3, 4), np.float32),
                "text.token_mask": np.ones((2, 3), bool),
                "text.pooled": np.zeros((2, 4), np.float32),
                KEY: MASK,
            },
            r"text\.attention_mask: expected its token ids 'text'",
        ),
        (
            {"image": np.zeros((2, 4, 4, 3), np.float32), "image.attention_mask": MASK},
            r"image\.attention_mask: expected one of the model's keys",
        ),
    ],
    ids=["int-mask", "short", "batch-size", "no-ids", "cached-text", "image"],
)
def test_validate_batch_refuses_a_bad_mask(batch, message):
    with pytest.raises(InputError, match=message):
        validate_batch(batch, ("image", "text"))


def test_an_encoder_refuses_a_mask_of_another_shape_or_dtype():
    encoder = _text_encoder("text_transformer")
    with pytest.raises(InputError, match=r"text\.attention_mask: expected a bool array"):
        encoder(jnp.asarray(IDS), train=False, mask=jnp.asarray(MASK, jnp.int32))
    with pytest.raises(InputError, match=r"text\.attention_mask: expected a bool array"):
        encoder(jnp.asarray(IDS), train=False, mask=jnp.asarray(MASK[:, :4]))


def _record(**fields: np.ndarray) -> bytes:
    return encode_record({"text": IDS[0], "label": np.array(1, np.int32)} | fields)


def test_decode_outputs_the_stored_mask():
    out = Decode(("text",), shapes=(("text", (6,)),)).map(_record(**{KEY: MASK[0]}))
    assert out[KEY].dtype == bool
    np.testing.assert_array_equal(out[KEY], MASK[0])
    np.testing.assert_array_equal(out["text"], IDS[0])


def test_decode_derives_the_mask_of_an_old_record():
    out = Decode(("text",)).map(_record())
    np.testing.assert_array_equal(out[KEY], IDS[0] != 0)


def test_decode_gives_no_mask_for_float_inputs():
    record = encode_record({"audio": np.zeros(8, np.int16), "label": np.array(0, np.int32)})
    assert set(Decode(("audio",)).map(record)) == {"audio", "audio_mask", "label"}


@pytest.mark.parametrize(
    "mask", [MASK[0].astype(np.uint8), MASK[0, :5], MASK], ids=["uint8", "short", "2d"]
)
def test_decode_refuses_a_bad_stored_mask(mask):
    with pytest.raises(DataError, match=r"record field 'text\.attention_mask': expected a bool"):
        Decode(("text",)).map(_record(**{KEY: mask}))
