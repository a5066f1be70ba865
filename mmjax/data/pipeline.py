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
from mmjax.data.transforms import AddNoise, DropModalities
from mmjax.errors import ConfigError

# Eval noise is drawn from its own fixed seed so every evaluation sees the same corrupted inputs.
EVAL_NOISE_SEED = 1234
# How far the training process reads ahead, in batches. grain's default (16 threads, 500
# elements, and an element here is a whole batch) decoded 16,000 records ahead of a 300-step
# run on the CPU the step needs, and kept decoding while it evaluated. Two threads keep a
# CPU or accelerator step fed (decoding holds a lock: records.py); `data.workers` scales out.
READ_AHEAD = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


def _per_process_batch(global_batch: int, field: str) -> int:
    if global_batch % jax.process_count():
        raise ConfigError(
            f"{field} ({global_batch}) must be divisible by the process count "
            f"({jax.process_count()})"
        )
    return global_batch // jax.process_count()


def train_dataset(
    cfg: DataConfig, modalities: tuple[str, ...], global_batch: int, seed: int
) -> grain.IterDataset:
    """Endless, shuffled training batches for this process [B / processes, ...]; checkpointable.

    Every process shuffles the whole split the same way, and global batch k is made of the
    consecutive runs of B / processes records that each process reads for itself (its run
    k * processes + process_index). So the global batches do not depend on the number of
    processes, and a process reads and decodes only its own records (the dataset is lazy).
    """
    source = sources.open_source(cfg)
    ds = grain.MapDataset.source(source.open_split("train")).seed(seed).shuffle().repeat()
    ds = ds.map(source.decoder(modalities))
    ds = ds.random_map(AddNoise(cfg.image_noise, cfg.audio_snr_db, cfg.noise_levels))
    if cfg.modality_dropout > 0:
        ds = ds.random_map(DropModalities(modalities, cfg.modality_dropout))
    local = _per_process_batch(global_batch, "train.batch_size")
    ds = ds.batch(local, drop_remainder=True)[jax.process_index() :: jax.process_count()]
    ds = ds.to_iter_dataset(READ_AHEAD)
    if cfg.workers > 0:
        # grain 0.2.18 reads an absl flag in its workers; unparsed flags raise there (grain#1355).
        if not absl.flags.FLAGS.is_parsed():
            absl.flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.workers))
    return ds


def eval_batches(
    cfg: DataConfig, modalities: tuple[str, ...], split: str, batch_size: int
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Every record of `split` once over all processes, as this process's part of each global
    batch of `batch_size`: (batch [batch_size / processes, ...], its number of real rows).

    Real rows come first; the rest repeat a record to keep shapes fixed. Every process gets the
    same number of batches (some may hold no real row), so collective steps stay in step.
    """
    source = sources.open_source(cfg)
    ds = grain.MapDataset.source(source.open_split(split)).map(source.decoder(modalities))
    ds = ds.seed(EVAL_NOISE_SEED)
    ds = ds.random_map(AddNoise(cfg.image_noise, cfg.audio_snr_db))
    local = _per_process_batch(batch_size, "train.eval_batch_size")
    total = len(ds)
    for start in range(0, total, batch_size):
        first = start + jax.process_index() * local
        wanted = range(first, first + local)
        records = [ds[min(i, total - 1)] for i in wanted]
        batch = {k: np.stack([r[k] for r in records]) for k in records[0]}
        yield batch, sum(i < total for i in wanted)
