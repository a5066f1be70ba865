"""The names of a batch's keys beyond the plain modalities (`image`, `audio`, `text`, `video`)
and `label`, shared by the data pipeline and the model so neither imports the other.

- `<m>_mask` [B] bool: modality m is present for that sample (False: missing);
- `<m>.attention_mask` [B, L] bool: which token positions of text modality m are real (the
  tokenizer's own mask, so a literal "[PAD]" in a text is not taken for padding);
- `<m>.tokens` [B, T, D], `<m>.token_mask` [B, T], `<m>.pooled` [B, D]: the cached Features of
  a frozen encoder (`mmjax features extract`), standing in for modality m's input.
"""

FEATURE_KEYS = ("tokens", "token_mask", "pooled")


def presence_key(modality: str) -> str:
    return f"{modality}_mask"


def attention_key(modality: str) -> str:
    return f"{modality}.attention_mask"


def cached_keys(modality: str) -> tuple[str, ...]:
    return tuple(f"{modality}.{k}" for k in FEATURE_KEYS)
