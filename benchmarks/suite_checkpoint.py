"""checkpoint: Orbax save (the part that blocks the loop, and the whole save) and restore of a
real train state, in MB/s, against a raw file write and read of the same bytes in the same run.

mmjax saves through `mmjax.train.checkpoint.Checkpointer`, an async Orbax CheckpointManager:
`save` returns once the arrays are copied off the device and the write goes on in the
background, so what the training loop pays is the blocking part. The target (reported, never
asserted) is `blocking_over_step < 1`: a save blocks the loop for less than one train step.

Protocol, on the state from `init_state` (parameters plus AdamW moments, replicated over the
data mesh) of `resnet18_bilstm_late` (`avdigits_late` in a smoke run):

- `variant="step"`: the jitted train step on one device-resident random batch (state carried,
  blocked on every call).
- `variant="save"`: one warm-up save (Orbax's one-time setup; its figures are `first_*`), then
  `saves` saves, each after one train step (so each saves a new state at a new step, as in
  training): `blocking_s` until `Checkpointer.save` returns, `total_s` until
  `manager.wait_until_finished()`; medians, and MB/s of the state's bytes (sum of leaf nbytes).
- `variant="restore"`: `Checkpointer.restore` of the latest step into the abstract target with
  the state's shardings, blocked until ready; one warm-up restore, median of `restores`.
- `variant="raw"`: the same leaves fetched to host numpy (`host_fetch_s`), written one after
  another into one file with plain Python writes + `os.fsync`, and read back into one buffer
  (from the page cache, as Orbax's restore reads right after its save); medians.

The save and restore records carry `*_over_raw`: Orbax MB/s over the raw MB/s. The checkpoint
directory lives under `ctx.out_dir` and is deleted at the end.
"""

import dataclasses
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from benchmarks.harness import Context, Planned
from mmjax import perf
from mmjax.config import DataConfig, ExperimentConfig, OptimConfig, TrainConfig, experiment_from
from mmjax.models import validate_batch
from mmjax.parallel import check_batch_size, data_mesh, put_batch
from mmjax.registry import MODELS
from mmjax.train.checkpoint import Checkpointer
from mmjax.train.state import init_state, state_shardings
from mmjax.train.step import make_train_step

SUITE = "checkpoint"
TARGET_BLOCKING_OVER_STEP = 1.0
MB = 1e6

# Per-sample inputs of the benchmarked models: (shape, kind); "ids" are token ids in [1, vocab).
INPUTS: dict[str, dict[str, tuple[tuple[int, ...], str]]] = {
    "avdigits_late": {"image": ((8, 8, 1), "unit"), "audio": ((8000,), "wave")},
    "resnet18_bilstm_late": {"image": ((32, 32, 3), "unit"), "text": ((32,), "ids")},
}
TEXT_VOCAB = 10000
NUM_CLASSES = 10


def experiment(model: str, batch: int) -> ExperimentConfig:
    """A whole experiment config for registered model `model`: default optim, data and train
    sections with `batch` as the batch size."""
    return experiment_from(
        {
            "model": MODELS.get(model)(),
            "optim": dataclasses.asdict(OptimConfig()),
            "data": dataclasses.asdict(DataConfig()),
            "train": dataclasses.asdict(TrainConfig(batch_size=batch)),
        }
    )


def random_batch(model: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A host batch of `model`'s inputs: images in [0, 1], waves ~N(0, 0.1), token ids in
    [1, 10000), every modality present, labels in [0, 10)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for modality, (shape, kind) in INPUTS[model].items():
        if kind == "unit":
            out[modality] = rng.random((batch, *shape), np.float32)
        elif kind == "wave":
            out[modality] = (0.1 * rng.standard_normal((batch, *shape))).astype(np.float32)
        else:
            out[modality] = rng.integers(1, TEXT_VOCAB, (batch, *shape)).astype(np.int32)
        out[f"{modality}_mask"] = np.ones(batch, bool)
    out["label"] = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
    return out


def _data_leaves(state: Any) -> list[jax.Array]:
    """The state's arrays, PRNG keys as their raw key data (what a file stores)."""
    return [
        jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        for x in jax.tree.leaves(state)
    ]


def _median(seconds: list[float]) -> float:
    return statistics.median(seconds)


def _timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    jax.block_until_ready(call())
    return time.perf_counter() - started


def _raw_write(path: Path, leaves: list[np.ndarray]) -> float:
    started = time.perf_counter()
    with path.open("wb") as f:
        for leaf in leaves:
            f.write(memoryview(np.ascontiguousarray(leaf)).cast("B"))
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - started


def _raw_read(path: Path, nbytes: int) -> float:
    buffer = bytearray(nbytes)
    started = time.perf_counter()
    with path.open("rb") as f:
        read = f.readinto(buffer)
    seconds = time.perf_counter() - started
    if read != nbytes:
        raise RuntimeError(f"raw read of {path}: {read} bytes, expected {nbytes}")
    return seconds


def _dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


VARIANTS = ("step", "save", "restore", "raw")


def _model_and_batch(ctx: Context) -> tuple[str, int]:
    return ("avdigits_late", 8) if ctx.smoke else ("resnet18_bilstm_late", 32)


def plan(ctx: Context) -> list[Planned]:
    """The four variants of one model's state."""
    model, batch = _model_and_batch(ctx)
    return [Planned(SUITE, model, variant, batch) for variant in VARIANTS]


def run(ctx: Context) -> None:
    """Step, save, restore and raw records for one model's train state."""
    model, batch = _model_and_batch(ctx)
    saves = 2 if ctx.smoke else 5
    mesh = data_mesh()
    check_batch_size(batch, mesh, "benchmark batch")
    exp = experiment(model, batch)
    config = json.loads(json.dumps(dataclasses.asdict(exp)))

    graphdef, state = init_state(exp, mesh)
    shardings = state_shardings(state, mesh)
    leaves = _data_leaves(state)
    nbytes = sum(x.nbytes for x in leaves)
    model_state = nnx.state(nnx.merge(graphdef, state)[0], nnx.Param)
    params = sum(x.size for x in jax.tree.leaves(model_state))
    host_batch = random_batch(model, batch)
    validate_batch(host_batch, exp.model.modalities, num_classes=exp.model.num_classes)
    placed = jax.block_until_ready(put_batch(host_batch, mesh))
    common = {
        "model": model,
        "batch": batch,
        "dtype": "float32",
        "mesh": str(mesh.size),
        "params": params,
        "state_leaves": len(leaves),
        "state_bytes": nbytes,
        "state_mb": nbytes / MB,
    }

    # The train step, state carried.
    train_step = make_train_step(graphdef, shardings, mesh)
    holder = [state]

    def step() -> Any:
        holder[0], metrics = train_step(holder[0], placed)
        return metrics

    first_step_s = _timed(step)  # compiles
    stats = perf.measure(step, warmup=1, iters=ctx.iterations(_timed(step)))
    step_s = stats.median
    ctx.record(
        SUITE,
        **common,
        variant="step",
        protocol="device-resident random batch reused; state carried; blocked on every call",
        first_step_s=round(first_step_s, 6),
        **{k: round(v, 6) if isinstance(v, float) else v for k, v in stats.summary().items()},
        samples_per_s=batch / step_s,
    )

    workdir = Path(tempfile.mkdtemp(prefix="checkpoint-", dir=ctx.out_dir))
    checkpointer = Checkpointer(workdir / "checkpoints", keep=2)
    try:
        # Orbax: a warm-up save, then `saves` saves each after one more train step.
        blocking, total = [], []
        for index in range(saves + 1):
            if index:
                jax.block_until_ready(step())
            state = holder[0]
            started = time.perf_counter()
            checkpointer.save(index, state, None, config, {"step": index})
            returned = time.perf_counter()
            checkpointer.manager.wait_until_finished()
            finished = time.perf_counter()
            blocking.append(returned - started)
            total.append(finished - started)
        latest = checkpointer.latest_step()
        on_disk = _dir_bytes(workdir / "checkpoints" / str(latest))

        def restore() -> Any:
            return checkpointer.restore(latest, holder[0], shardings)

        first_restore_s = _timed(restore)
        restores = [_timed(restore) for _ in range(saves)]

        # Raw: the same bytes through plain file I/O.
        started = time.perf_counter()
        host = [np.asarray(x) for x in jax.device_get(_data_leaves(holder[0]))]
        host_fetch_s = time.perf_counter() - started
        raw_path = workdir / "state.bin"
        raw_writes = [_raw_write(raw_path, host) for _ in range(saves)]
        raw_reads = [_raw_read(raw_path, nbytes) for _ in range(saves)]
    finally:
        checkpointer.close()
        shutil.rmtree(workdir, ignore_errors=True)

    raw_write_mbps = nbytes / MB / _median(raw_writes)
    raw_read_mbps = nbytes / MB / _median(raw_reads)
    blocking_s, total_s = _median(blocking[1:]), _median(total[1:])
    restore_s = _median(restores)
    ctx.record(
        SUITE,
        **common,
        variant="save",
        protocol="Checkpointer.save (async Orbax, data_iter=None) after one train step; "
        "blocking: until save returns; total: until wait_until_finished; 1 warm-up save",
        saves=saves,
        first_blocking_s=round(blocking[0], 6),
        first_total_s=round(total[0], 6),
        blocking_s=round(blocking_s, 6),
        blocking_s_max=round(max(blocking[1:]), 6),
        total_s=round(total_s, 6),
        blocking_mbps=nbytes / MB / blocking_s,
        total_mbps=nbytes / MB / total_s,
        checkpoint_bytes_on_disk=on_disk,
        step_s=round(step_s, 6),
        blocking_over_step=blocking_s / step_s,
        blocking_over_step_target=TARGET_BLOCKING_OVER_STEP,
        meets_blocking_target=blocking_s / step_s < TARGET_BLOCKING_OVER_STEP,
        raw_write_mbps=raw_write_mbps,
        total_over_raw=(nbytes / MB / total_s) / raw_write_mbps,
    )
    ctx.record(
        SUITE,
        **common,
        variant="restore",
        protocol="Checkpointer.restore of the latest step into the abstract target with the "
        "state's shardings, blocked until ready; 1 warm-up restore",
        restores=len(restores),
        first_restore_s=round(first_restore_s, 6),
        restore_s=round(restore_s, 6),
        restore_mbps=nbytes / MB / restore_s,
        raw_read_mbps=raw_read_mbps,
        restore_over_raw=(nbytes / MB / restore_s) / raw_read_mbps,
    )
    ctx.record(
        SUITE,
        **common,
        variant="raw",
        protocol="leaves fetched to host numpy, written back to back into one file "
        "(write + flush + fsync) and read back into one buffer (page cache)",
        repeats=saves,
        host_fetch_s=round(host_fetch_s, 6),
        write_s=round(_median(raw_writes), 6),
        read_s=round(_median(raw_reads), 6),
        write_mbps=raw_write_mbps,
        read_mbps=raw_read_mbps,
    )
