"""Word vectors from a catalog text encoder's token-embedding table, written as a GloVe text
file, so the recurrent text encoders (`bilstm`, `bigru`: `embeddings` + `vocab`) can start
from pretrained vectors on a dataset's own words vocabulary."""

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmjax.errors import ConfigError, DataError
from mmjax.pretrained.catalog import entry, package_dir, weight_file

TABLES = {"minilm-l6": "embeddings.word_embeddings.weight"}  # catalog name -> its table


def word_vectors(words: Sequence[str], encoder: str = "minilm-l6") -> np.ndarray:
    """float32 [len(words), D]: each word's vector is the mean of the encoder's embeddings of
    the word pieces its tokenizer cuts it into (no [CLS]/[SEP]); a word the tokenizer turns
    into nothing gets NaNs (the text encoders then start it at random)."""
    from tokenizers import Tokenizer

    if encoder not in TABLES:
        raise ConfigError(
            f"word vectors: {encoder!r} has no token-embedding table here; expected one of "
            f"{', '.join(TABLES)}"
        )
    spec = entry(encoder)
    table = spec.read(weight_file(spec))[TABLES[encoder]].astype(np.float32)
    path = package_dir(spec) / spec.tokenizer
    if not path.is_file():
        raise DataError(f"{spec.package} has no {spec.tokenizer}; {spec.install_line()}")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()  # the file pads to a fixed length
    tokenizer.no_truncation()
    out = np.full((len(words), table.shape[1]), np.nan, np.float32)
    for i, encoding in enumerate(tokenizer.encode_batch(list(words), add_special_tokens=False)):
        if encoding.ids:
            out[i] = table[encoding.ids].mean(axis=0)
    return out


def write_word_vectors(words: Sequence[str], path: str | Path, encoder: str = "minilm-l6") -> int:
    """Writes `words`' vectors (see `word_vectors`) to `path` in GloVe's text format, one
    "word v1 ... vD" line per word that has a vector, atomically; returns the dimension D."""
    vectors = word_vectors(words, encoder)
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            for word, vector in zip(words, vectors, strict=True):
                if " " not in word and not np.isnan(vector).any():
                    f.write(word + " " + " ".join(f"{x:.6g}" for x in vector) + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return vectors.shape[1]
