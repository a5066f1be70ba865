"""pipeline: the grain input pipeline's samples/s against the train step's consumption rate,
and the fraction of a training loop's wall time spent waiting for data.

Training is input-bound when the loader cannot keep up with the step, so the suite measures,
in one process, on the real AV-Digits dataset and the real mmjax pipeline
(`mmjax.data.pipeline.train_dataset`, `mmjax.parallel.put_batch`,
`mmjax.train.step.LeafTrainStep` on `init_state`) with the demo model `avdigits_late`:

- `variant="loader"`: the loader alone (model idle), per `data.workers` setting (0, and 2 in
  a full run): time per `next(iterator)` over N batches after one warm-up batch (whose time,
  including worker start-up, is `first_batch_s`), and separately the host->device placement
  `put_batch` of those batches (blocked until the arrays are ready).
- `variant="step"`: the jitted train step alone on one pre-placed, device-resident batch
  reused every call (state carried, blocked on each call).
- `variant="loop"`: `steps` steps of the real loop with `workers=0` (about 5 s of isolated
  steps, 20 to 100; 8 in a smoke run), on one iterator, after one warm-up step and after
  waiting (`settle_s`) until grain's read-ahead buffer (`pipeline.READ_AHEAD`: 2 threads, 4
  batches, with `workers=0` too) is full and the process is idle: the steady state of a long
  run, not the loop's first seconds, in which the loader fills that buffer on the same cores.
  Three protocols (fields `protocol_name`, `protocol`): `loop_py` does what
  `mmjax.train.loop.train` does (`mmjax.train.prefetch`: a thread keeps the next two batches
  read and placed, starting on each replacement once a step is dispatched; `MetricsLog.push`
  fetches the previous step's metrics, so at most two steps are in flight); `no_prefetch` is
  that loop without its prefetch stage (next -> put_batch -> dispatch); `blocking` blocks on
  every step's metrics before the next `next()` (no overlap). `data_wait_fraction` is the
  time the loop spent getting its next placed batch over its wall time (ended by blocking on
  the final state).

`loader_over_step` (on the loader and loop records) is the loader's samples/s over the
step's; `loop_step_over_step` is a loop step's wall time over the isolated step's (above 1
when the loader's background threads, which grain runs with `workers=0` too, compete with the
step for the host's cores). Targets (reported, never asserted): `loader_over_step >= 3` and
`data_wait_fraction < 0.02`.
"""

import math
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from benchmarks.harness import Context, Planned
from mmjax import perf
from mmjax.config import ExperimentConfig, experiment_from
from mmjax.data import pipeline, sources
from mmjax.errors import DataError
from mmjax.experiments import avdigits_config
from mmjax.models import validate_batch
from mmjax.parallel import check_batch_size, data_mesh, put_batch
from mmjax.train.metrics import MetricsLog
from mmjax.train.prefetch import prefetch_batches
from mmjax.train.state import init_state, state_shardings
from mmjax.train.step import LeafTrainStep

SUITE = "pipeline"
MODEL = "avdigits_late"
DATASET = "avdigits"
PREPARE_COMMAND = "mmjax data prepare avdigits"
TARGET_LOADER_OVER_STEP = 3.0
TARGET_DATA_WAIT_FRACTION = 0.02
LOOP_SECONDS = 5.0  # isolated-step seconds per loop protocol in a full run
SETTLE_LIMIT_S = 30.0  # the most the loop waits for grain's read-ahead buffer to fill


LOOP_PROTOCOLS = {
    "loop_py": "as mmjax.train.loop.train: a prefetch thread reads and places (put_batch) "
    "batch n+1 while step n runs -> take(prefetch) -> async step dispatch -> refill (the "
    "thread starts on the next batch only now) -> MetricsLog.push "
    "(fetches the previous step's metrics: <= 2 steps in flight); wall ended by blocking on "
    "the final state; after grain's read-ahead buffer filled",
    "no_prefetch": "the loop before its prefetch stage: next -> put_batch -> async step "
    "dispatch -> MetricsLog.push; after grain's read-ahead buffer filled",
    "blocking": "next -> put_batch -> step -> block_until_ready(metrics) every step "
    "(no overlap of loading with the step); after grain's read-ahead buffer filled",
}


def _batch(ctx: Context) -> int:
    return 8 if ctx.smoke else 64


def _worker_settings(ctx: Context) -> tuple[int, ...]:
    return (0,) if ctx.smoke else (0, 2)


def plan(ctx: Context, data_root: str | Path | None = None) -> list[Planned]:
    """The step, the loader per worker setting and the loop per protocol. A full run without
    the prepared dataset raises the DataError `run` would; a smoke run builds its own."""
    root = _root(ctx, data_root)
    if ctx.smoke:
        note = f"small AV-Digits under {root} (built first if absent)"
    else:
        _check(root)
        note = f"AV-Digits at {root}"
    batch = _batch(ctx)
    return [
        Planned(SUITE, MODEL, "step", batch, note=note),
        *(
            Planned(SUITE, MODEL, "loader", batch, note=f"workers={w}")
            for w in _worker_settings(ctx)
        ),
        *(Planned(SUITE, MODEL, "loop", batch, note=name) for name in LOOP_PROTOCOLS),
    ]


def _root(ctx: Context, data_root: str | Path | None) -> Path:
    if data_root is not None:
        return Path(data_root)
    return ctx.out_dir / "data" if ctx.smoke else sources.data_root("")


def _check(root: Path) -> None:
    """A DataError naming the prepare command if `root` holds no usable AV-Digits build."""
    try:
        sources.load_info(root, DATASET)
    except DataError as err:
        raise DataError(
            f"the pipeline benchmark reads the prepared AV-Digits dataset under {root}, which is "
            f"not usable ({err}); prepare it with `{PREPARE_COMMAND}`"
        ) from None


def dataset_root(ctx: Context, data_root: str | Path | None = None) -> Path:
    """Where the AV-Digits build is read: `data_root` if given; in a smoke run a small build
    under `ctx.out_dir/data` (built now if absent); else the prepared dataset at
    `sources.data_root("")`, a DataError naming the prepare command if it is not there."""
    root = _root(ctx, data_root)
    if data_root is None and ctx.smoke:
        try:
            sources.load_info(root, DATASET)
        except DataError:
            from mmjax.data.builders.avdigits import prepare_avdigits

            prepare_avdigits(root, small=True, progress=False)
    _check(root)
    return root


def _experiment(root: Path, batch: int, workers: int) -> ExperimentConfig:
    cfg = avdigits_config(MODEL)
    cfg.data.root = str(root)
    cfg.data.workers = workers
    cfg.train.batch_size = batch
    return experiment_from(cfg)


def _rate(batch: int, seconds: list[float]) -> float:
    return batch * len(seconds) / sum(seconds)


def _next_ms(seconds: list[float]) -> dict[str, float]:
    """next_ms p10 / p50 / p90 and the number of timed batches."""
    stats = perf.Stats(tuple(seconds))
    return {
        **{f"next_ms_p{q}": round(stats.percentile_ms(q), 4) for q in (10, 50, 90)},
        "iters": len(seconds),
    }


def _close(iterator: Any) -> None:
    """Stop a grain iterator's prefetch threads and worker processes now, not at exit."""
    close = getattr(iterator, "close", None)
    if callable(close):
        close()


def _time_loader(
    exp: ExperimentConfig, mesh: jax.sharding.Mesh, batches: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Loader-only figures for `exp.data.workers`, and the first batch (for the step)."""
    ds = pipeline.train_dataset(exp.data, exp.model.modalities, exp.train.batch_size, 0)
    started = time.perf_counter()
    iterator = iter(ds)
    first = next(iterator)
    first_batch_s = time.perf_counter() - started
    loads, puts = [], []
    try:
        for _ in range(batches):
            started = time.perf_counter()
            batch = next(iterator)
            loaded = time.perf_counter()
            jax.block_until_ready(put_batch(batch, mesh))
            puts.append(time.perf_counter() - loaded)
            loads.append(loaded - started)
    finally:
        _close(iterator)
    size = exp.train.batch_size
    fields = {
        "workers": exp.data.workers,
        "first_batch_s": round(first_batch_s, 4),
        **_next_ms(loads),
        "samples_per_s": _rate(size, loads),
        "put_ms_p50": round(perf.Stats(tuple(puts)).percentile_ms(50), 4),
        "put_samples_per_s": _rate(size, puts),
        "loader_and_put_samples_per_s": size * len(loads) / (sum(loads) + sum(puts)),
    }
    return fields, first


def _time_loop(
    iterator: Any,
    train_step: Any,
    state: Any,
    mesh: jax.sharding.Mesh,
    steps: int,
    log: MetricsLog,
    protocol: str,
) -> tuple[dict[str, float], Any]:
    """`steps` steps of the training loop under `protocol` (LOOP_PROTOCOLS); (wait and wall
    figures, the final state). The wait is the time the loop spent getting its next placed
    batch: in take + refill with the prefetch stage, in next(iterator) + put_batch without."""
    waits, puts = [], []
    prefetcher = None
    if protocol == "loop_py":
        prefetcher = prefetch_batches([iterator], lambda host: put_batch(host[0], mesh))
    started = time.perf_counter()
    try:
        for step in range(steps):
            began = time.perf_counter()
            if prefetcher is not None:
                placed = prefetcher.take().placed
                loaded = placed_at = time.perf_counter()
            else:
                batch = next(iterator)
                loaded = time.perf_counter()
                placed = put_batch(batch, mesh)
                placed_at = time.perf_counter()
            state, metrics = train_step(state, placed)
            refill_s = 0.0
            if prefetcher is not None:
                refilling = time.perf_counter()
                prefetcher.refill()
                refill_s = time.perf_counter() - refilling
            if protocol == "blocking":
                jax.block_until_ready(metrics)
            else:
                log.push(step + 1, metrics)
            waits.append(loaded - began + refill_s)
            puts.append(placed_at - loaded)
        log.flush()
        jax.block_until_ready(state)
        wall = time.perf_counter() - started
    finally:
        if prefetcher is not None:
            prefetcher.close()
    wait = sum(waits) + sum(puts)
    return {
        "wall_s": round(wall, 4),
        "next_wait_s": round(sum(waits), 4),
        "put_wait_s": round(sum(puts), 4) if prefetcher is None else None,
        "data_wait_fraction": wait / wall,
        "next_ms_p50": round(perf.Stats(tuple(waits)).percentile_ms(50), 4),
        "next_ms_p90": round(perf.Stats(tuple(waits)).percentile_ms(90), 4),
        "loop_step_ms": round(1000 * wall / steps, 4),
    }, state


def _wait_until_idle(limit_s: float, poll_s: float = 0.25) -> tuple[float, bool]:
    """Sleep until this process's threads go idle (CPU time under 10% of a poll's wall time):
    grain's read-ahead buffer is full. (seconds waited, whether it went idle within limit_s)"""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        cpu, wall = time.process_time(), time.perf_counter()
        time.sleep(poll_s)
        if time.process_time() - cpu < 0.1 * (time.perf_counter() - wall):
            return time.perf_counter() - started, True
    return time.perf_counter() - started, False


def _loop_steps(ctx: Context, step_s: float) -> int:
    """Steps per loop protocol: 8 in a smoke run; else about 5 s of isolated steps, at
    least 20 and at most 100 (a loop step is slower than an isolated one on a busy CPU)."""
    if ctx.smoke:
        return 8
    return int(min(100, max(20, math.ceil(LOOP_SECONDS / max(step_s, 1e-6)))))


def run(ctx: Context, data_root: str | Path | None = None) -> None:
    """Loader, step and loop records for `avdigits_late` (batch 64; 8 in a smoke run)."""
    batch = _batch(ctx)
    loader_batches = 4 if ctx.smoke else 40
    root = dataset_root(ctx, data_root)
    info = sources.load_info(root, DATASET)
    mesh = data_mesh()
    check_batch_size(batch, mesh, "benchmark batch")
    exp = _experiment(root, batch, workers=0)
    modalities = exp.model.modalities
    common = {
        "model": MODEL,
        "batch": batch,
        "dtype": "float32",
        "mesh": str(mesh.size),
        "dataset": DATASET,
        "data_root": str(root),
        "dataset_small": bool(info.get("small")),
        "train_records": info["splits"]["train"]["num_records"],
        "sample_shapes": {m: info["modalities"][m]["shape"] for m in modalities},
    }

    # (a) the loader alone, the model idle.
    loaders = []
    first = None
    for workers in _worker_settings(ctx):
        fields, got = _time_loader(_experiment(root, batch, workers), mesh, loader_batches)
        loaders.append(fields)
        first = got if first is None else first
    validate_batch(first, modalities, num_classes=exp.model.num_classes)

    # The loop's iterator starts now, so that grain fills its read-ahead buffer while the
    # state is built and the step compiles; both (b) and (c) run after it has filled.
    log_path = ctx.out_dir / "pipeline_metrics.jsonl"
    iterator = iter(pipeline.train_dataset(exp.data, modalities, batch, exp.train.seed))
    try:
        loop_first = next(iterator)
        graphdef, state = init_state(exp, mesh)
        train_step = LeafTrainStep(graphdef, state_shardings(state, mesh), mesh)  # the loop's
        state = train_step.leaves(state)
        started = time.perf_counter()
        state, metrics = train_step(state, put_batch(loop_first, mesh))  # compiles
        jax.block_until_ready(metrics)
        first_step_s = time.perf_counter() - started
        settle_s, settled = _wait_until_idle(1.0 if ctx.smoke else SETTLE_LIMIT_S)
    except BaseException:
        _close(iterator)
        raise

    # (b) the train step alone on one device-resident batch.
    placed = jax.block_until_ready(put_batch(first, mesh))
    holder = [state]

    def step() -> Any:
        holder[0], out = train_step(holder[0], placed)
        return out

    started = time.perf_counter()
    jax.block_until_ready(step())
    stats = perf.measure(step, warmup=1, iters=ctx.iterations(time.perf_counter() - started))
    state = holder[0]
    step_rate = batch / stats.median
    loop_steps = _loop_steps(ctx, stats.median)
    ctx.record(
        SUITE,
        **common,
        variant="step",
        protocol="pre-placed batch reused; state carried; blocked on every call; after "
        "the loop's loader went idle (first_step_s, compilation included, overlapped the "
        "loader filling its buffer)",
        first_step_s=round(first_step_s, 4),
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in stats.summary().items()},
        samples_per_s=step_rate,
    )
    for fields in loaders:
        ctx.record(
            SUITE,
            **common,
            variant="loader",
            protocol="next(iterator) timed per batch after 1 warm-up batch (grain's 16 read "
            "threads prefetch in the background, with workers=0 too); put_batch timed "
            "separately (blocked); model idle",
            **fields,
            step_samples_per_s=step_rate,
            loader_over_step=fields["samples_per_s"] / step_rate,
            loader_over_step_target=TARGET_LOADER_OVER_STEP,
            meets_loader_target=fields["samples_per_s"] / step_rate >= TARGET_LOADER_OVER_STEP,
        )

    # (c) the real loop, workers=0: loop.py's overlap, then blocking on every step.
    loader_rate = loaders[0]["samples_per_s"]
    try:
        for name, protocol in LOOP_PROTOCOLS.items():
            log = MetricsLog(log_path, every=10**9)
            fields, state = _time_loop(iterator, train_step, state, mesh, loop_steps, log, name)
            samples_per_s = batch * loop_steps / fields["wall_s"]
            slowdown = fields["loop_step_ms"] / (1000 * stats.median)
            ctx.record(
                SUITE,
                **common,
                variant="loop",
                workers=0,
                protocol_name=name,
                protocol=protocol,
                steps=loop_steps,
                settle_s=round(settle_s, 4),
                settled=settled,
                **fields,
                samples_per_s=samples_per_s,
                step_samples_per_s=step_rate,
                loop_step_over_step=slowdown,
                loader_samples_per_s=loader_rate,
                loader_over_step=loader_rate / step_rate,
                data_wait_target=TARGET_DATA_WAIT_FRACTION,
                meets_data_wait_target=fields["data_wait_fraction"] < TARGET_DATA_WAIT_FRACTION,
            )
    finally:
        _close(iterator)
        log_path.unlink(missing_ok=True)
