"""The trainer: build mesh -> state -> data -> resume -> jitted steps -> checkpoints -> eval."""

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from mmjax.config import ConfigDict, ExperimentConfig, as_json_dict, experiment_from
from mmjax.data import pipeline, sources
from mmjax.data.source import class_names
from mmjax.errors import CheckpointError, ConfigError, TrainingError
from mmjax.fewshot import training_probe as fewshot_probe
from mmjax.folders import output_folder
from mmjax.models import validate_batch
from mmjax.parallel import check_batch_size, data_mesh, put_batch
from mmjax.progress import progress_bar
from mmjax.train.balance import ogm_settings
from mmjax.train.blend import gradient_blend
from mmjax.train.checkpoint import Checkpointer
from mmjax.train.classification import classification_metrics
from mmjax.train.metrics import MetricsLog, Pace
from mmjax.train.optim import learning_rate_schedule
from mmjax.train.preemption import PreemptionWatch
from mmjax.train.prefetch import prefetch_batches
from mmjax.train.run_lock import workdir_lock
from mmjax.train.state import init_state, state_shardings
from mmjax.train.step import EvalStep, LeafTrainStep, make_eval_step
from mmjax.train.tensorboard import TensorBoardLog
from mmjax.train.utilisation import utilisation_probe
from mmjax.train.warm_start import warm_start
from mmjax.train.watch import BEST_DIR, LOGGED, Watch, watched_split
from mmjax.train.workdir import (
    SWEEP_FILE,
    read_experiment,
    restore_trained,
    resume_conflicts,
    write_experiment,
)

logger = logging.getLogger(__name__)
# What `evaluate` measures on a split (results.json holds each as {split: value}).
EVAL_METRICS = ("accuracy", "loss", "examples", "macro_f1", "per_class_accuracy", "confusion")


def evaluate(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    exp: ExperimentConfig,
    split: str,
    mesh: jax.sharding.Mesh,
    *,
    missing: tuple[str, ...] = (),
    eval_step: EvalStep | None = None,
) -> dict[str, float]:
    """Accuracy and mean loss of the model in `state` over every record of `split`, with the
    `missing` modalities masked out for every sample. `eval_step` (`make_eval_step`) spares
    a compile when several splits or models of one shape are evaluated."""
    if eval_step is None:
        eval_step = make_eval_step(graphdef, jax.tree.map(lambda x: x.sharding, state), mesh)
    modalities = exp.model.modalities
    loss_sum, confusion = 0.0, np.zeros((exp.model.num_classes,) * 2, np.int64)
    for batch, rows in pipeline.eval_batches(
        exp.data, modalities, split, exp.train.eval_batch_size
    ):
        valid = np.arange(len(batch["label"])) < rows
        for m in missing:
            batch[f"{m}_mask"] = np.zeros_like(batch[f"{m}_mask"])
        out = jax.device_get(
            eval_step(state, put_batch(batch, mesh), put_batch({"v": valid}, mesh)["v"])
        )
        loss_sum += float(out["loss_sum"])
        confusion += out["confusion"]
    examples = int(confusion.sum())
    if not examples:
        raise ConfigError(f"split {split!r} of {exp.data.name!r} has no records to evaluate")
    return {
        "loss": loss_sum / examples,
        "examples": examples,
        **classification_metrics(confusion),
        "confusion": confusion.tolist(),
    }


def evaluate_splits(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    exp: ExperimentConfig,
    splits: list[str],
    mesh: jax.sharding.Mesh,
    eval_step: EvalStep,
) -> dict[str, dict[str, float]]:
    """The final results: each of `evaluate`'s metrics as {split: value}."""
    evals = {s: evaluate(graphdef, state, exp, s, mesh, eval_step=eval_step) for s in splits}
    return {key: {s: r[key] for s, r in evals.items()} for key in EVAL_METRICS}


def check_batch_sizes(exp: ExperimentConfig, mesh: jax.sharding.Mesh) -> None:
    """The train micro-batch and the eval batch split evenly over the mesh's devices."""
    check_batch_size(
        exp.train.batch_size // exp.train.grad_accum_steps,
        mesh,
        "train.batch_size / grad_accum_steps",
    )
    check_batch_size(exp.train.eval_batch_size, mesh, "train.eval_batch_size")


def available_splits(info: dict[str, Any], wanted: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(splits to evaluate, splits the build lacks); an unknown split name is a ConfigError."""
    unknown = [s for s in wanted if s not in info["splits"]]
    if unknown:
        raise ConfigError(
            f"train.eval_splits: {unknown} are not splits of {info['name']!r} "
            f"(it has {', '.join(info['splits'])})"
        )
    have = [s for s in wanted if info["splits"].get(s, {}).get("num_records", 0) > 0]
    return have, [s for s in wanted if s not in have]


def check_nonfinite(
    steps: list[int], policy: str, checkpointer: Checkpointer, *, copy: str = ""
) -> None:
    """Stop, or with policy "skip" warn, for `steps` whose loss or gradient was NaN/inf (the
    train step left the state as it was on those steps); `copy` names a sweep's copy."""
    if not steps:
        return
    who = f"copy {copy}, " if copy else ""
    if policy == "skip":
        if jax.process_index() == 0:
            warnings.warn(
                f"{who}step {', '.join(map(str, steps))}: the loss or gradient was NaN/inf; the "
                "batch was skipped (train.on_nonfinite=skip)",
                RuntimeWarning,
                stacklevel=2,
            )
        return
    good = checkpointer.latest_step()
    where = (
        f"step {good} in {checkpointer.manager.directory}"
        if good is not None
        else "none (no checkpoint was saved yet)"
    )
    raise TrainingError(
        f"{who}step {steps[0]}: the loss or gradient is NaN/inf, so training stopped; that step "
        f"did not change the parameters and nothing after it was saved. Last good checkpoint: "
        f"{where}. Lower optim.learning_rate, or set train.on_nonfinite=skip to skip such batches"
    )


def _resume(
    checkpointer: Checkpointer,
    config: dict[str, Any],
    state: nnx.State,
    shardings: nnx.State,
    data_iter: Any,
) -> tuple[int, nnx.State, float]:
    """(step, state, training seconds so far) of the newest readable checkpoint; (0, state, 0)
    if none. An unreadable newer one is set aside with a warning (Checkpointer.restore_latest).

    The data iterator is restored in place. A checkpoint of another model is refused.
    """

    def refuse_other_settings(step: int, saved: dict[str, Any]) -> None:
        conflicts = resume_conflicts(saved, config)
        if conflicts:
            raise CheckpointError(
                f"the checkpoint at step {step} in {checkpointer.manager.directory} was made "
                f"with other settings ({'; '.join(conflicts)}); a resumed run would not match "
                "an uninterrupted one. Use a new --workdir, or the saved settings (nothing was "
                "changed)"
            )

    restored = checkpointer.restore_latest(
        state, shardings, data_iter, check_config=refuse_other_settings
    )
    if restored is None:
        return 0, state, {}
    return restored.step, restored.state, restored.metrics


def train(
    config: ConfigDict | dict[str, Any],
    workdir: str | Path,
    *,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) the experiment `config` in `workdir`; return the results dict.

    `stop_after` ends this call after that many total steps with a checkpoint, as a
    preempted job would; calling `train` again on the workdir resumes exactly.
    """
    started = time.perf_counter()
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"stop_after must be >= 1, got {stop_after}")
    config = as_json_dict(config)
    exp = experiment_from(config)
    workdir = Path(workdir)
    if (workdir / SWEEP_FILE).is_file():
        raise ConfigError(
            f"--workdir {workdir} is a sweep's folder: resume it with `mmjax sweep`, or train "
            "this run in a new --workdir"
        )
    output_folder(workdir, "--workdir")
    with workdir_lock(workdir):
        return _train_locked(config, exp, workdir, stop_after, progress, started)


def _train_locked(
    config: dict[str, Any],
    exp: ExperimentConfig,
    workdir: Path,
    stop_after: int | None,
    progress: bool,
    started: float,
) -> dict[str, Any]:
    """`train` once it holds the workdir's lock."""
    mesh = data_mesh(fsdp=exp.parallel.fsdp)
    check_batch_sizes(exp, mesh)
    source = sources.open_source(exp.data)
    source.verify()
    source.check_experiment(exp)
    info = source.info
    modalities = exp.model.modalities
    eval_splits, missing_splits = available_splits(info, exp.train.eval_splits)
    watched = watched_split(exp.train)
    if exp.train.eval_every and not info["splits"].get(watched, {}).get("num_records"):
        raise ConfigError(
            f"train.eval_every evaluates split {watched!r} during training (train.keep_best's "
            f"split, else val), which {info['name']!r} has no records in (its splits: "
            f"{', '.join(info['splits'])})"
        )
    graphdef, state = init_state(exp, mesh)
    shardings = state_shardings(state, mesh, exp.parallel)
    data_iter = iter(
        pipeline.train_dataset(exp.data, modalities, exp.train.batch_size, exp.train.order_seed)
    )
    checkpointer = Checkpointer(workdir / "checkpoints", keep=exp.train.keep_checkpoints)
    best = Checkpointer(workdir / BEST_DIR, keep=1) if exp.train.keep_best else None
    tb = batches = None
    log = MetricsLog(workdir / "metrics.jsonl", exp.train.log_every)
    # A preemption notice from here to the last save (resume, compile, steps, the final wait)
    # stops the run at the next step with a checkpoint instead of killing it.
    with PreemptionWatch() as preemption:
        try:
            fresh = checkpointer.latest_step() is None
            if fresh and (exp.train.init_from or exp.model.pretrained):
                state = warm_start(graphdef, state, exp, mesh)
            step, state, saved_metrics = _resume(checkpointer, config, state, shardings, data_iter)
            earlier_seconds = saved_metrics.get("train_seconds", 0.0)
            watch = Watch.from_record(saved_metrics.get("watch"))
            tb = TensorBoardLog(workdir, step, config)
            schedule = learning_rate_schedule(exp.optim, exp.train.steps)
            pace = Pace(exp.train.batch_size, schedule, step)
            log.extras, log.sink = pace, tb.row
            log.resume_at(step)
            announce(workdir, step, exp.train.steps)
            source.check_model(nnx.merge(graphdef, state)[0])
            write_experiment(workdir, config, source.description())
            train_step = LeafTrainStep(
                graphdef,
                shardings,
                mesh,
                grad_accum_steps=exp.train.grad_accum_steps,
                compute_dtype=exp.train.compute_dtype,
                ogm=ogm_settings(exp),
            )
            probe = utilisation_probe(graphdef, shardings, exp, mesh)
            blend = gradient_blend(graphdef, shardings, exp, mesh)
            fewshot = fewshot_probe(graphdef, shardings, exp, mesh)
            eval_step = make_eval_step(graphdef, shardings, mesh)  # during training and after
            last = exp.train.steps if stop_after is None else min(exp.train.steps, stop_after)
            if watch.stopped:  # an early-stopped run, called again: nothing left to train
                last = step
            shapes = source.sample_shapes(modalities)
            bar = progress_bar(
                total=last,
                initial=step,
                enabled=progress and jax.process_index() == 0,
                desc="train",
                unit="step",
            )
            train_started = time.perf_counter()
            first_step, preempted = step, False
            # Started after the resume put data_iter back where the checkpoint left it.
            batches = prefetch_batches([data_iter], lambda host: put_batch(host[0], mesh))
            # The step runs on the state's leaves; `state` is rebuilt from them where needed.
            leaves = train_step.leaves(state)
            while step < last:
                waiting = time.perf_counter()
                fetched = batches.take()
                pace.waited(time.perf_counter() - waiting)
                position = fetched.positions[0]  # what a checkpoint at this step saves
                if step == first_step:
                    validate_batch(
                        fetched.host[0],
                        modalities,
                        num_classes=exp.model.num_classes,
                        sample_shapes=shapes,
                    )
                leaves, metrics = train_step(leaves, fetched.placed)
                batches.refill()  # the next batch is read and placed while this step runs
                step += 1
                if probe is not None and step % exp.train.utilisation_every == 0:
                    metrics = {**metrics, **probe(train_step.state(leaves))}
                if fewshot is not None and step % exp.train.fewshot_every == 0:
                    metrics = {**metrics, **fewshot(train_step.state(leaves))}
                if blend is not None and step % exp.train.balance_every == 0:
                    blended, weights = blend.update(train_step.state(leaves))
                    leaves = train_step.leaves(blended)
                    metrics = {**metrics, **weights}
                evaluated = bool(exp.train.eval_every) and step % exp.train.eval_every == 0
                if evaluated:
                    state = train_step.state(leaves)
                    values = evaluate(graphdef, state, exp, watched, mesh, eval_step=eval_step)
                    metrics = {**metrics, **{f"{watched}/{k}": values[k] for k in LOGGED}}
                    if exp.train.keep_best and watch.observe(step, values, exp.train):
                        best.save(step, state, position, config, {"watch": watch.record()})
                log.push(step, metrics)
                if evaluated:
                    log.flush()  # a row at this very step: the evaluation's own x position
                check_nonfinite(log.take_nonfinite(), exp.train.on_nonfinite, checkpointer)
                preempted = preemption.reached(step)
                ending = preempted or watch.stopped or step == last
                if ending or step % exp.train.checkpoint_every == 0:
                    log.flush()
                    check_nonfinite(log.take_nonfinite(), exp.train.on_nonfinite, checkpointer)
                    seconds = earlier_seconds + time.perf_counter() - train_started
                    saved = {"train_seconds": seconds, "watch": watch.record()}
                    state = train_step.state(leaves)
                    checkpointer.save(step, state, position, config, log.last | saved)
                    logger.debug(f"step {step}: checkpoint saved")
                bar.update(1)
                if step % exp.train.log_every == 0 and "loss" in log.last:
                    bar.set_postfix(
                        loss=f"{log.last['loss']:.3f}", acc=f"{log.last['accuracy']:.3f}"
                    )
                if preempted or watch.stopped:
                    break
            state = train_step.state(leaves)
            log.flush()
            bar.close()
            train_seconds = earlier_seconds + time.perf_counter() - train_started
        finally:
            if batches is not None:
                batches.close()
            checkpointer.close()
            if best is not None:
                best.close()
            if tb is not None:
                tb.flush()

    results: dict[str, Any] = {
        "steps": step,
        "started_at_step": first_step,  # the checkpoint this call resumed from (0: fresh)
        "steps_this_call": step - first_step,
        "completed": step >= exp.train.steps or watch.stopped,
        "preempted": preempted,
        "early_stopped": watch.stopped,
    }
    if exp.train.keep_best:
        results["best"] = {exp.train.keep_best: watch.best, "step": watch.best_step}
    logger.info(f"{workdir}: at step {step} after {train_seconds:.1f} s of training")
    if results["completed"]:
        logger.info(f"evaluating {', '.join(eval_splits) or 'no split'}")
        results.update(evaluate_splits(graphdef, state, exp, eval_splits, mesh, eval_step))
        results["missing_splits"] = missing_splits
        tb.results(results, class_names(source.description()))
    tb.close()
    results.update(
        train_seconds=round(train_seconds, 3),  # over every call that trained this workdir
        examples_per_s=round(step * exp.train.batch_size / max(train_seconds, 1e-9), 1),
        wall_time_s=round(time.perf_counter() - started, 3),
        devices=mesh.size,
    )
    if jax.process_index() == 0:
        (workdir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def announce(workdir: Path, step: int, steps: int) -> None:
    """The first line of a run's log: fresh or resumed (train and sweep)."""
    if step:
        logger.info(f"{workdir}: resuming from the checkpoint of step {step} (of {steps})")
    else:
        logger.info(f"{workdir}: training {steps} steps from the start")


def evaluate_workdir(
    workdir: str | Path,
    splits: tuple[str, ...] | None = None,
    *,
    data_root: str = "",
    missing: tuple[str, ...] = (),
    best: bool = False,
) -> dict[str, dict[str, Any]]:
    """Evaluate the latest checkpoint of `workdir` (with `best`: the one that scored best on
    `train.keep_best`) on `splits` (default: its eval_splits), optionally with the `missing`
    modalities masked out."""
    workdir = Path(workdir)
    config = read_experiment(workdir)["config"]
    if data_root:
        config.setdefault("data", {})["root"] = data_root
    exp = experiment_from(config)
    mesh = data_mesh()
    _, graphdef, state = restore_trained(workdir, exp, mesh, best=best, model_only=True)
    unknown = [m for m in missing if m not in exp.model.modalities]
    if unknown:
        raise ConfigError(
            f"missing: {unknown} are not modalities of this model {exp.model.modalities}"
        )
    eval_step = make_eval_step(graphdef, jax.tree.map(lambda x: x.sharding, state), mesh)
    return {
        s: evaluate(graphdef, state, exp, s, mesh, missing=missing, eval_step=eval_step)
        for s in splits or exp.train.eval_splits
    }
