"""The first few eval batches of a split, placed on the training mesh once: what the in-training
probes (utilisation, few-shot, Gradient-Blending's loss measurements) evaluate every N steps."""

from typing import NamedTuple

import jax
import numpy as np

from mmjax.config import ExperimentConfig
from mmjax.data import pipeline
from mmjax.errors import ConfigError, DataError
from mmjax.parallel import put_batch

PROBE_BATCHES = 4  # eval batches per split that a probe measures (few-shot, Gradient-Blending)


class ProbeBatch(NamedTuple):
    batch: dict[str, jax.Array]  # placed, label included
    valid: jax.Array  # [B] bool, placed: the real rows
    labels: np.ndarray  # [rows], on the host
    rows: int


def probe_batches(
    exp: ExperimentConfig, mesh: jax.sharding.Mesh, split: str, count: int, option: str
) -> list[ProbeBatch]:
    """Up to `count` eval batches of `split`; a ConfigError naming `option` (what asked for
    them) when the split has no records."""
    out = []
    try:
        for batch, rows in pipeline.eval_batches(
            exp.data, exp.model.modalities, split, exp.train.eval_batch_size
        ):
            valid = put_batch({"v": np.arange(len(batch["label"])) < rows}, mesh)["v"]
            out.append(ProbeBatch(put_batch(batch, mesh), valid, batch["label"][:rows], rows))
            if len(out) == count:
                break
    except DataError:
        pass
    if not out:
        raise ConfigError(f"{option} needs {split!r} records; {exp.data.name!r} has none")
    return out
