"""grain pipelines: ArrayRecord split -> this process's shard -> shuffle -> transforms -> batches.

Batches are host-local numpy dicts; `mmjax.parallel.put_batch` turns them into global arrays.
"""

from collections.abc import Iterator

import absl.flags
import grain
import jax
import numpy as np

from mmjax.config import DataConfig
from mmjax.data import sources
from mmjax.data.transforms import AddNoise, Decode, DropModalities
from mmjax.errors import ConfigError

# Eval noise is drawn from its own fixed seed so every evaluation sees the same corrupted inputs.
EVAL_NOISE_SEED = 1234


def _per_process_batch(global_batch: int) -> int:
    if global_batch % jax.process_count():
        raise ConfigError(
            f"train.batch_size ({global_batch}) must be divisible by the process count "
            f"({jax.process_count()})"
        )
    return global_batch // jax.process_count()


def train_dataset(
    cfg: DataConfig, modalities: tuple[str, ...], global_batch: int, seed: int
) -> grain.IterDataset:
    """Endless, reshuffled-each-epoch training batches for this process; checkpointable."""
    source = sources.open_split(cfg, "train")
    ds = grain.MapDataset.source(source)[jax.process_index() :: jax.process_count()]
    ds = ds.seed(seed).shuffle().repeat().map(Decode(modalities))
    ds = ds.random_map(AddNoise(cfg.image_noise, cfg.audio_snr_db))
    if cfg.modality_dropout > 0:
        ds = ds.random_map(DropModalities(modalities, cfg.modality_dropout))
    ds = ds.batch(_per_process_batch(global_batch), drop_remainder=True).to_iter_dataset()
    if cfg.workers > 0:
        # grain 0.2.18 reads an absl flag in its workers; unparsed flags raise there (grain#1355).
        if not absl.flags.FLAGS.is_parsed():
            absl.flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.workers))
    return ds


def eval_batches(
    cfg: DataConfig, modalities: tuple[str, ...], split: str, batch_size: int
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Every record of `split` once, as (batch padded to `batch_size`, number of real rows)."""
    source = sources.open_split(cfg, split)
    ds = grain.MapDataset.source(source)[jax.process_index() :: jax.process_count()]
    ds = ds.map(Decode(modalities)).seed(EVAL_NOISE_SEED)
    ds = ds.random_map(AddNoise(cfg.image_noise, cfg.audio_snr_db))
    for batch in ds.batch(batch_size, drop_remainder=False):
        rows = len(batch["label"])
        pad = batch_size - rows
        if pad:
            batch = {
                k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in batch.items()
            }
        yield batch, rows
