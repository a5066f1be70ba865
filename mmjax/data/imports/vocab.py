"""The `words` tokenizer: a vocabulary of the train split's words, stored with the dataset.

Text is lower-cased and cut into runs of word characters and single punctuation marks. Id 0 is
padding ("[PAD]"), id 1 an unknown word ("[UNK]"); then the train split's words, most frequent
first (ties alphabetical), up to `max_size` ids. The file has one token per line, line index =
id, the format the text encoders' `vocab` setting reads (for GloVe / word2vec tables).
"""

import re
from collections import Counter
from collections.abc import Iterable

import numpy as np

PAD, UNK = "[PAD]", "[UNK]"
FILE = "vocab.txt"
_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def build_vocab(texts: Iterable[str], max_size: int) -> list[str]:
    """[PAD], [UNK] and the most frequent words of `texts`, `max_size` tokens at most."""
    counts = Counter(w for text in texts for w in words(text))
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    return [PAD, UNK, *ranked[: max(0, max_size - 2)]]


def encode_words(texts: list[str], vocab: list[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [N, length], attention mask bool [N, length]): each text's first `length`
    words, unknown words as [UNK], padded with 0."""
    return encode_tokens([words(text) for text in texts], vocab, length)


def encode_tokens(
    texts: list[list[str]], vocab: list[str], length: int
) -> tuple[np.ndarray, np.ndarray]:
    """`encode_words` for texts already cut into words (each word one id, [UNK] if unknown)."""
    index = {w: i for i, w in enumerate(vocab)}
    ids = np.zeros((len(texts), length), np.int32)
    for row, tokens in enumerate(texts):
        found = [index.get(w, 1) for w in tokens[:length]]
        ids[row, : len(found)] = found
    return ids, ids != 0
