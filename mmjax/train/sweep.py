"""`mmjax sweep`: copies of one model (seeds, learning rates, data noise) trained as one
compiled program, checkpointed and resumed like one run; each copy ends as a workdir of its own.

The train state of every copy is stacked on a leading copies axis [S, ...] and the one train
step (`train_step_function`) runs for every copy in one program, vmapped (S times wider
kernels) or unrolled (see `sweep_step`): one compile, one dispatch per step. Each copy reads
the batches its single run would read (its own iterator), or all read the first copy's
(`shared_order`, one pipeline). The sweep's checkpoints hold the stacked
state and every iterator; at the end each copy's state, iterator position, metrics and results
are written to WORKDIR/<copy>/ exactly as `mmjax train` writes a run, so `eval`, `predict`,
`robustness` and a later resume work on a copy as on any run.

Layout: WORKDIR/sweep.json (the copies and their configs), WORKDIR/checkpoints/ (stacked),
WORKDIR/results.json (every copy's results), WORKDIR/<copy>/{experiment.json, metrics.jsonl,
checkpoints/, results.json}.
"""

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from mmjax.compile_options import model_compiler_options
from mmjax.config import ConfigDict, ExperimentConfig, as_json_dict, experiment_from
from mmjax.data import pipeline, sources
from mmjax.data.source import class_names
from mmjax.errors import CheckpointError, ConfigError
from mmjax.folders import output_folder
from mmjax.models import validate_batch
from mmjax.parallel import (
    batch_sharded,
    copies_batch_sharded,
    data_mesh,
    put_batch,
    put_copies_batch,
    replicated,
)
from mmjax.progress import progress_bar
from mmjax.train.balance import OGMGE, ogm_settings
from mmjax.train.checkpoint import Checkpointer
from mmjax.train.loop import (
    announce,
    available_splits,
    check_batch_sizes,
    check_nonfinite,
    evaluate_splits,
)
from mmjax.train.metrics import CopiesMetricsLog, Pace
from mmjax.train.optim import learning_rate_schedule, make_optimizer
from mmjax.train.preemption import PreemptionWatch
from mmjax.train.prefetch import prefetch_batches
from mmjax.train.run_lock import workdir_lock
from mmjax.train.state import state_initializer
from mmjax.train.step import Batch, Metrics, make_eval_step, train_step_function
from mmjax.train.sweep_plan import SweepPlan, check_memory, plan_sweep
from mmjax.train.tensorboard import TensorBoardLog
from mmjax.train.warm_start import warm_start
from mmjax.train.workdir import EXPERIMENT_FILE, SWEEP_FILE, resume_conflicts, write_experiment

logger = logging.getLogger(__name__)


def stacked_shardings(shardings: nnx.State, mesh: jax.sharding.Mesh) -> nnx.State:
    """Each leaf's sharding with a whole copies axis in front."""
    return jax.tree.map(lambda s: NamedSharding(mesh, PartitionSpec(None, *s.spec)), shardings)


def stack_states(states: list[nnx.State], shardings: nnx.State) -> nnx.State:
    stack = jax.jit(
        lambda *copies: jax.tree.map(lambda *leaves: jnp.stack(leaves), *copies),
        out_shardings=shardings,
    )
    return stack(*states)


def sweep_step(
    graphdef: nnx.GraphDef, plan: SweepPlan, mesh: jax.sharding.Mesh, shardings: nnx.State
) -> Callable[[nnx.State, Batch, dict[str, jax.Array]], tuple[nnx.State, Metrics]]:
    """(stacked state, batch [S, B, ...] or shared [B, ...], traced settings [S]) -> (stacked
    state, metrics {key: [S]}): the single run's step for every copy, with each copy's
    optimizer and OGM-GE settings traced, in one compiled program.

    `plan.program` "vmap" vmaps the step over the copies: S times wider kernels, for GPUs and
    TPUs. "unrolled" places the S copies' steps side by side in the program, each with the
    single run's own kernels: on XLA:CPU a convolution vmapped over stacked kernels becomes a
    grouped convolution, several times slower than S separate ones (docs/results/sweep.md).
    """
    exp = plan.first
    step = train_step_function(
        graphdef,
        mesh,
        grad_accum_steps=exp.train.grad_accum_steps,
        compute_dtype=exp.train.compute_dtype,
    )
    ogm = ogm_settings(exp)
    optimizer_keys = [k for k in plan.varying if k.startswith("optim.")]

    def one_copy(state: nnx.State, batch: Batch, traced: dict[str, jax.Array]):
        tx = None
        if optimizer_keys:
            values = {k.split(".")[1]: traced[k] for k in optimizer_keys}
            tx = make_optimizer(exp.optim, exp.train.steps, values)
        copy_ogm = None
        if ogm is not None:
            alpha = traced.get("train.balance_alpha", ogm.alpha)
            copy_ogm = OGMGE(alpha, ogm.until, traced["seed"])
        return step(state, batch, tx, copy_ogm)

    def unrolled(state: nnx.State, batch: Batch, traced: dict[str, jax.Array]):
        def pick(tree, i):
            return jax.tree.map(lambda x: x[i], tree)

        outputs = []
        for i in range(len(plan.copies)):
            copy_batch = batch if plan.shared_order else pick(batch, i)
            outputs.append(one_copy(pick(state, i), copy_batch, pick(traced, i)))
        return jax.tree.map(lambda *copies: jnp.stack(copies), *outputs)

    if plan.program == "vmap":
        program = jax.vmap(one_copy, in_axes=(0, None if plan.shared_order else 0, 0))
    else:
        program = unrolled
    batches = batch_sharded(mesh) if plan.shared_order else copies_batch_sharded(mesh)
    return jax.jit(
        program,
        in_shardings=(shardings, batches, replicated(mesh)),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=0,
        compiler_options=model_compiler_options(),
    )


def _refuse_other_sweep(plan: SweepPlan, directory: Path):
    """check_config for the sweep's checkpoints: the same copies with the same settings."""
    current = plan.record()

    def check(step: int, saved: dict[str, Any]) -> None:
        old = [c["name"] for c in saved.get("copies", [])]
        new = [c["name"] for c in current["copies"]]
        conflicts = []
        if old != new:
            conflicts.append(f"copies {old} -> {new}")
        elif saved.get("shared_order") != current["shared_order"]:
            conflicts.append(f"shared order {saved.get('shared_order')} -> {plan.shared_order}")
        else:
            for before, now in zip(saved["copies"], current["copies"], strict=True):
                conflicts += [
                    f"{now['name']}: {c}" for c in resume_conflicts(before["config"], now["config"])
                ]
        if conflicts:
            raise CheckpointError(
                f"the sweep's checkpoint at step {step} in {directory} was made with other "
                f"settings ({'; '.join(conflicts)}); a resumed sweep would not match an "
                "uninterrupted one. Use a new --workdir, or the saved settings (nothing was "
                "changed)"
            )

    return check


def _check_workdir(workdir: Path) -> None:
    if (workdir / EXPERIMENT_FILE).is_file() and not (workdir / SWEEP_FILE).is_file():
        raise ConfigError(
            f"--workdir {workdir} holds a single run ({EXPERIMENT_FILE}): give the sweep a "
            "new --workdir"
        )


def _copy_count(seeds: Sequence[int], set_each: Mapping[str, Sequence[Any]]) -> int:
    return len(seeds) * math.prod(len(v) for v in set_each.values())


def sweep(
    config: ConfigDict | dict[str, Any],
    workdir: str | Path,
    *,
    seeds: Sequence[int] | None = None,
    set_each: Mapping[str, Sequence[Any]] | None = None,
    shared_order: bool = False,
    program: str = "auto",
    stop_after: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) one copy of `config` per seed and combination of `set_each` values
    (default: the config's own seed) as one compiled program in `workdir` (`program`: "vmap",
    "unrolled", or "auto": unrolled on CPU, vmap elsewhere; see `sweep_step`); return the
    results {"copies": {name: the copy's results, as `mmjax.train` returns them}, ...}.

    Each copy equals, to float rounding, `mmjax.train` of its own config
    (WORKDIR/<copy>/experiment.json). `stop_after` ends this call after that many total steps
    with a checkpoint; calling `sweep` again with the same arguments resumes exactly.
    """
    started = time.perf_counter()
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"stop_after must be >= 1, got {stop_after}")
    config = as_json_dict(config)
    base = experiment_from(config)
    seeds = [base.train.seed] if seeds is None else [int(s) for s in seeds]
    set_each = dict(set_each or {})
    workdir = Path(workdir)
    _check_workdir(workdir)
    output_folder(workdir, "--workdir")
    with workdir_lock(workdir):
        return _sweep_locked(
            config, base, workdir, seeds, set_each, shared_order, program, stop_after, progress,
            started,
        )  # fmt: skip


def _sweep_locked(
    config: dict[str, Any],
    base: ExperimentConfig,
    workdir: Path,
    seeds: list[int],
    set_each: dict[str, Sequence[Any]],
    shared_order: bool,
    program: str,
    stop_after: int | None,
    progress: bool,
    started: float,
) -> dict[str, Any]:
    """`sweep` once it holds the workdir's lock."""
    mesh = data_mesh(fsdp=base.parallel.fsdp)
    check_memory(base, _copy_count(seeds, set_each), mesh)  # before building every config
    plan = plan_sweep(config, seeds, set_each, shared_order=shared_order, program=program)
    exp = plan.first
    check_batch_sizes(exp, mesh)
    source = sources.open_source(exp.data)
    source.verify()
    for copy in plan.copies:
        source.check_experiment(copy.exp)
    modalities = exp.model.modalities
    eval_splits, missing_splits = available_splits(source.info, exp.train.eval_splits)
    graphdef, init = state_initializer(exp, mesh)
    copy_dirs = [workdir / c.name for c in plan.copies]
    for folder in copy_dirs:
        folder.mkdir(parents=True, exist_ok=True)
    readers = plan.copies[:1] if shared_order else plan.copies
    iterators = [
        iter(
            pipeline.train_dataset(
                c.exp.data, modalities, exp.train.batch_size, c.exp.train.order_seed
            )
        )
        for c in readers
    ]
    checkpointer = Checkpointer(workdir / "checkpoints", keep=exp.train.keep_checkpoints)
    log = CopiesMetricsLog([d / "metrics.jsonl" for d in copy_dirs], exp.train.log_every)
    tbs: list[TensorBoardLog] = []
    prefetched = None
    with PreemptionWatch() as preemption:
        try:
            fresh = checkpointer.latest_step() is None
            states = []
            for copy in plan.copies:
                state = init(copy.seed)
                if fresh and (copy.exp.train.init_from or copy.exp.model.pretrained):
                    state = warm_start(graphdef, state, copy.exp, mesh)
                states.append(state)
            source.check_model(nnx.merge(graphdef, states[0])[0])
            single = jax.tree.map(lambda x: x.sharding, states[0])
            shardings = stacked_shardings(single, mesh)
            state = stack_states(states, shardings)
            del states
            restored = checkpointer.restore_latest(
                state, shardings, iterators, check_config=_refuse_other_sweep(plan, workdir)
            )
            step, earlier_seconds = 0, 0.0
            if restored is not None:
                step, state = restored.step, restored.state
                earlier_seconds = restored.metrics.get("train_seconds", 0.0)
            log.resume_at(step)
            tbs = [TensorBoardLog(d, step, c.config) for d, c in zip(copy_dirs, plan.copies)]
            schedules = [learning_rate_schedule(c.exp.optim, exp.train.steps) for c in plan.copies]
            paces = [Pace(exp.train.batch_size, s, step) for s in schedules]
            for copy_log, tb, pace in zip(log.logs, tbs, paces, strict=True):
                copy_log.extras, copy_log.sink = pace, tb.row
            announce(workdir, step, exp.train.steps)
            if jax.process_index() == 0:
                (workdir / SWEEP_FILE).write_text(json.dumps(plan.record(), indent=2))
            for copy, folder in zip(plan.copies, copy_dirs, strict=True):
                write_experiment(folder, copy.config, source.description())
            train_step = sweep_step(graphdef, plan, mesh, shardings)
            traced = jax.device_put(plan.traced(), replicated(mesh))
            last = exp.train.steps if stop_after is None else min(exp.train.steps, stop_after)
            shapes = source.sample_shapes(modalities)
            bar = progress_bar(
                total=last,
                initial=step,
                enabled=progress and jax.process_index() == 0,
                desc=f"sweep of {len(plan.copies)}",
                unit="step",
            )
            train_started = time.perf_counter()
            first_step, preempted = step, False

            def place(batches: list[dict[str, np.ndarray]]) -> dict[str, jax.Array]:
                if shared_order:
                    return put_batch(batches[0], mesh)
                stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
                return put_copies_batch(stacked, mesh)

            # Started after the resume put the iterators back where the checkpoint left them.
            prefetched = prefetch_batches(iterators, place)
            while step < last:
                waiting = time.perf_counter()
                fetched = prefetched.take()
                for pace in paces:
                    pace.waited(time.perf_counter() - waiting)
                if step == first_step:
                    for batch in fetched.host:
                        validate_batch(
                            batch,
                            modalities,
                            num_classes=exp.model.num_classes,
                            sample_shapes=shapes,
                        )
                state, metrics = train_step(state, fetched.placed, traced)
                prefetched.refill()  # the next batches are read and placed while this step runs
                step += 1
                log.push(step, metrics)
                _check_copies(log, plan, checkpointer)
                preempted = preemption.reached(step)
                if preempted or step % exp.train.checkpoint_every == 0 or step == last:
                    log.flush()
                    _check_copies(log, plan, checkpointer)
                    seconds = earlier_seconds + time.perf_counter() - train_started
                    last_rows = {c.name: lg.last for c, lg in zip(plan.copies, log.logs)}
                    checkpointer.save(
                        step,
                        state,
                        fetched.positions,
                        plan.record(),
                        {"train_seconds": seconds, "copies": last_rows},
                    )
                bar.update(1)
                if step % exp.train.log_every == 0 and "loss" in log.logs[0].last:
                    losses = [lg.last["loss"] for lg in log.logs if "loss" in lg.last]
                    bar.set_postfix(loss=f"{min(losses):.3f}-{max(losses):.3f}")
                if preempted:
                    break
            log.flush()
            bar.close()
            train_seconds = earlier_seconds + time.perf_counter() - train_started
        finally:
            if prefetched is not None:
                prefetched.close()
            checkpointer.close()
            for tb in tbs:
                tb.flush()

    results: dict[str, Any] = {
        "steps": step,
        "started_at_step": first_step,  # the checkpoint this call resumed from (0: fresh)
        "steps_this_call": step - first_step,
        "completed": step >= exp.train.steps,
        "preempted": preempted,
        "copies": {},
    }
    logger.info(f"{workdir}: at step {step} after {train_seconds:.1f} s of training")
    if results["completed"]:
        results["copies"] = _finish_copies(
            plan,
            graphdef,
            state,
            single,
            iterators,
            log,
            workdir,
            mesh,
            step,
            train_seconds,
            eval_splits,
            missing_splits,
        )
        names = class_names(source.description())
        for tb, copy_results in zip(tbs, results["copies"].values(), strict=True):
            tb.results(copy_results, names)
    for tb in tbs:
        tb.close()
    examples = step * exp.train.batch_size * len(plan.copies)
    results.update(
        train_seconds=round(train_seconds, 3),  # the sweep's, over every call
        examples_per_s=round(examples / max(train_seconds, 1e-9), 1),  # all copies together
        wall_time_s=round(time.perf_counter() - started, 3),
        devices=mesh.size,
    )
    if jax.process_index() == 0:
        (workdir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _check_copies(log: CopiesMetricsLog, plan: SweepPlan, checkpointer: Checkpointer) -> None:
    for copy, steps in zip(plan.copies, log.take_nonfinite(), strict=True):
        check_nonfinite(steps, copy.exp.train.on_nonfinite, checkpointer, copy=copy.name)


def _finish_copies(
    plan: SweepPlan,
    graphdef: nnx.GraphDef,
    state: nnx.State,
    single: nnx.State,
    iterators: list,
    log: CopiesMetricsLog,
    workdir: Path,
    mesh: jax.sharding.Mesh,
    step: int,
    train_seconds: float,
    eval_splits: list[str],
    missing_splits: list[str],
) -> dict[str, dict[str, Any]]:
    """Write each copy's final checkpoint (its state and iterator position, as its single
    run would have them) and evaluate it; {copy: results}, each also in WORKDIR/<copy>/."""
    unstack = jax.jit(
        lambda stacked, i: jax.tree.map(lambda x: x[i], stacked), out_shardings=single
    )
    eval_step = make_eval_step(graphdef, single, mesh)
    out = {}
    for i, copy in enumerate(plan.copies):
        folder = workdir / copy.name
        copy_state = unstack(state, i)
        checkpointer = Checkpointer(folder / "checkpoints", keep=copy.exp.train.keep_checkpoints)
        try:
            if checkpointer.latest_step() != step:  # a rerun after a finished sweep: kept
                metrics = log.logs[i].last | {"train_seconds": train_seconds}
                iterator = iterators[0 if plan.shared_order else i]
                checkpointer.save(step, copy_state, iterator, copy.config, metrics)
        finally:
            checkpointer.close()
        results = {
            "steps": step,
            "completed": True,
            "preempted": False,
            **evaluate_splits(graphdef, copy_state, copy.exp, eval_splits, mesh, eval_step),
            "missing_splits": missing_splits,
            # The sweep's time, shared by its copies.
            "train_seconds": round(train_seconds, 3),
            "examples_per_s": round(step * copy.exp.train.batch_size / max(train_seconds, 1e-9), 1),
            "devices": mesh.size,
            "sweep": {"workdir": str(workdir), "copies": len(plan.copies)},
        }
        if jax.process_index() == 0:
            (folder / "results.json").write_text(json.dumps(results, indent=2))
        out[copy.name] = results
    return out
