"""New inputs for a trained model: files, byte strings, texts or arrays -> a model batch,
prepared exactly as the model's training data was (the dataset description a workdir or a
published card records: `DataSource.description`).

Per modality, a path / bytes / text is one sample and a list of them a batch (None in a list:
missing for that sample); an array is taken as the model's own input (float images in [0, 1],
waveforms, token ids), one sample when it has the per-sample rank.
"""

import os
import warnings
from typing import Any

import numpy as np

from mmjax.batch_keys import attention_key, presence_key
from mmjax.data.transforms import SCALES
from mmjax.errors import DataError, InputError

RAW = (str, bytes, os.PathLike)


def prepare_inputs(
    dataset: dict[str, Any], modalities: tuple[str, ...], inputs: dict[str, Any]
) -> tuple[dict[str, Any], bool]:
    """(batch, single): the model batch for `inputs` and whether it was one unbatched sample."""
    raw = {m: v for m, v in inputs.items() if m in modalities and _is_raw(v)}
    batch = {k: v for k, v in inputs.items() if k not in raw}
    sizes = {m: 1 if isinstance(v, RAW) else len(v) for m, v in raw.items()}
    if len(set(sizes.values())) > 1:
        raise InputError(f"inputs: every modality needs the same number of samples, got {sizes}")
    single = bool(raw) and all(isinstance(v, RAW) for v in raw.values())
    for m, value in raw.items():
        values = [value] if isinstance(value, RAW) else list(value)
        batch |= _prepare(dataset, m, values, batch, modalities)
    arrays = [m for m in modalities if m in inputs and m not in raw]
    if arrays and not raw:
        shapes = dataset["modalities"]
        single = all(np.ndim(inputs[m]) == len(shapes[m]["shape"]) for m in arrays)
    if single:
        batch = {
            k: np.asarray(v)[None] if k in arrays or _per_sample_key(k, arrays) else v
            for k, v in batch.items()
        }
    return batch, single


def _per_sample_key(key: str, arrays: list[str]) -> bool:
    return any(key in (presence_key(m), attention_key(m)) for m in arrays)


def _is_raw(value: Any) -> bool:
    """A path, bytes or text, or a list of those (None allowed for a missing sample)."""
    if isinstance(value, RAW):
        return True
    return (
        isinstance(value, list | tuple)
        and bool(value)
        and all(v is None or isinstance(v, RAW) for v in value)
        and any(v is not None for v in value)
    )


def _prepare(
    dataset: dict[str, Any], m: str, values: list, batch: dict, modalities: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """{m: [N, ...] model input, <m>_mask [N]} (text adds its attention mask; a clip may add
    its audio track when the model takes audio from the video and none was given)."""
    present = np.array([v is not None for v in values])
    if m == "text":
        ids, mask = tokenize_texts(dataset, [v if isinstance(v, str) else "" for v in values])
        return {m: ids, attention_key(m): mask, presence_key(m): present}
    decoded = [_decode(dataset, m, v) if v is not None else None for v in values]
    out = {m: _stack(dataset, m, [d[m] if d else None for d in decoded]), presence_key(m): present}
    if m == "video" and "audio" in modalities and "audio" not in batch:
        tracks = [d.get("audio") if d else None for d in decoded]
        silent = [
            _name(v) for v, d, t in zip(values, decoded, tracks, strict=True) if d and t is None
        ]
        if silent:
            warnings.warn(
                f"video {', '.join(silent)}: no audio track; predicting with the audio "
                "modality masked (missing) for it",
                UserWarning,
                stacklevel=4,
            )
        if any(t is not None for t in tracks):
            out["audio"] = _stack(dataset, "audio", tracks)
            out[presence_key("audio")] = np.array([t is not None for t in tracks])
    return out


def _stack(dataset: dict[str, Any], m: str, arrays: list) -> np.ndarray:
    """float32 [N, ...] of stored-dtype arrays (zeros for None), scaled as training scales."""
    shape = tuple(dataset["modalities"][m]["shape"])
    out = np.zeros((len(arrays), *shape), np.float32)
    for i, x in enumerate(arrays):
        if x is not None:
            out[i] = x.astype(np.float32) * SCALES.get(x.dtype, 1.0)
    return out


def _decode(dataset: dict[str, Any], m: str, value: Any) -> dict[str, np.ndarray]:
    """One file or byte string -> {modality: array} as its dataset stored it (uint8, int16)
    or, for the built-in datasets, as the model takes it (float)."""
    if "options" in dataset:  # an imported dataset
        from mmjax.data.imports.decode import Preprocess

        try:
            return Preprocess.from_info(dataset).decode(m, value)
        except DataError as err:  # MediaError: a file that cannot be decoded
            raise InputError(f"{m}: {_name(value)}: {err}") from None
    spec = dataset["modalities"][m]
    if isinstance(value, bytes):
        raise InputError(f"{m}: this model's dataset takes files, not bytes")
    if m == "image":
        from mmjax.data.image_io import load_image

        return {"image": load_image(value, tuple(spec["shape"]))}
    if m == "audio":
        from mmjax.data.audio_io import prepare_waveform, read_wav

        wave, rate = read_wav(value)
        length = spec["shape"][0]
        return {
            "audio": prepare_waveform(wave, rate, sample_rate=spec["sample_rate"], length=length)
        }
    raise InputError(f"{m}: this model's dataset takes no {m} files")


def _name(value: Any) -> str:
    return f"<{len(value)} bytes>" if isinstance(value, bytes) else str(value)


def _text_vocab(dataset: dict[str, Any]) -> dict[str, Any]:
    vocab = dataset.get("text_vocab")
    if not vocab:
        raise InputError("text: this model's dataset records no tokenizer; pass token ids")
    return vocab


def tokenize_texts(dataset: dict[str, Any], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [N, L], attention mask bool [N, L]) with the dataset's own tokenizer."""
    vocab = _text_vocab(dataset)
    if "tokens" in vocab:
        from mmjax.data.imports.vocab import encode_words

        return encode_words(texts, vocab["tokens"], vocab["length"])
    from mmjax.pretrained.load import tokenize

    return tokenize(vocab["tokenizer"], texts, length=vocab["length"])


def text_words(dataset: dict[str, Any], ids: np.ndarray, mask: np.ndarray) -> list[list[str]]:
    """The words behind token ids [N, L] (attention mask [N, L]), as the dataset's tokenizer
    reads them back: the vocabulary's words, one per id ("[UNK]" for an unknown one), or a
    catalog tokenizer's decoding without its special tokens, split at spaces."""
    vocab = _text_vocab(dataset)
    if "tokens" in vocab:
        table = vocab["tokens"]
        return [[table[i] for i in row[keep]] for row, keep in zip(ids, mask)]
    from mmjax.pretrained.load import decode_tokens

    texts = decode_tokens(vocab["tokenizer"], [row[keep].tolist() for row, keep in zip(ids, mask)])
    return [text.split() for text in texts]


def words_to_ids(dataset: dict[str, Any], texts: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """`tokenize_texts` for texts given as words (`text_words`' output, edited): with a word
    vocabulary each word is one id, as it was read back."""
    vocab = _text_vocab(dataset)
    if "tokens" in vocab:
        from mmjax.data.imports.vocab import encode_tokens

        return encode_tokens(texts, vocab["tokens"], vocab["length"])
    return tokenize_texts(dataset, [" ".join(words) for words in texts])
