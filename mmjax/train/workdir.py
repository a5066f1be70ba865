"""What a workdir records about its run, and which config changes a resume may not make."""

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from mmjax.config import ExperimentConfig, experiment_from
from mmjax.errors import CheckpointError, MmjaxError
from mmjax.train.checkpoint import Checkpointer
from mmjax.train.state import abstract_state, state_shardings
from mmjax.train.watch import BEST_DIR

EXPERIMENT_FILE = "experiment.json"
SWEEP_FILE = "sweep.json"  # a sweep's folder: its copies are workdirs in sub-folders
# Settings a resumed run may change: they do not alter the parameters it computes.
RESUMABLE_CHANGES = (
    "data.root",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.eval_batch_size",
    "train.eval_splits",
    "train.init_from",  # only a fresh run reads these two
    "train.init_modules",
    "train.eval_every",  # how often to evaluate changes no parameter; keep_best may not change
    "train.early_stop_patience",
    # The layout over devices, like the device count itself, changes only rounding.
    "parallel.",
)


def read_experiment(workdir: Path) -> dict[str, Any]:
    """The workdir's experiment record {"config", "dataset"}; CheckpointError if unusable."""
    path = Path(workdir) / EXPERIMENT_FILE
    try:
        found = path.is_file()
    except OSError as err:  # e.g. a name too long for the file system
        raise CheckpointError(
            f"--workdir {str(workdir)[:200]!r} is unusable ({err.strerror})"
        ) from None
    if not found and (Path(workdir) / SWEEP_FILE).is_file():
        copies = sorted(p.parent.name for p in Path(workdir).glob(f"*/{EXPERIMENT_FILE}"))
        raise CheckpointError(
            f"{workdir} is a sweep's folder, not one run: give one of its copies, "
            f"{', '.join(str(Path(workdir) / c) for c in copies) or '(none written yet)'}"
        )
    if not found:
        raise CheckpointError(f"{workdir} is not an mmjax workdir (no {EXPERIMENT_FILE})")
    try:
        record = json.loads(path.read_text())
        experiment_from(record["config"])
        record["dataset"]["modalities"]
    except (ValueError, KeyError, TypeError, RecursionError, MmjaxError) as err:
        raise CheckpointError(f"{path} is unreadable or not an mmjax record ({err})") from None
    return record


def write_experiment(workdir: Path, config: dict[str, Any], dataset: dict[str, Any]) -> None:
    """Record the config and the dataset's description (`DataSource.description`) for `eval`
    and `predict`."""
    record = {"config": config, "dataset": dataset}
    if jax.process_index() == 0:
        (Path(workdir) / EXPERIMENT_FILE).write_text(json.dumps(record, indent=2))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def resume_conflicts(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The settings in which `current` differs from the checkpoint's `saved` config and which
    would make the resumed run differ from an uninterrupted one ("key: old -> new")."""
    old = _flatten(dataclasses.asdict(experiment_from(saved)))
    new = _flatten(dataclasses.asdict(experiment_from(current)))
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key) and not key.startswith(RESUMABLE_CHANGES)
    ]


def restore_trained(
    workdir: Path,
    exp: ExperimentConfig,
    mesh: jax.sharding.Mesh,
    *,
    step: int | None = None,
    best: bool = False,
    model_only: bool = False,
) -> tuple[int, nnx.GraphDef, nnx.State]:
    """(step, graphdef, state) of `workdir`'s checkpoint `step` (default: the newest readable
    one; a newer unreadable one is skipped with a warning), or with `best` the one that scored
    best on `train.keep_best`, laid out on `mesh` by `state_shardings` (replicated on a mesh
    without an fsdp axis). With `model_only`, the model's graphdef and state alone: the
    optimizer's moments are never read. The checkpoint directory is opened read-only:
    nothing is written or moved."""
    if best and not exp.train.keep_best:
        raise CheckpointError(
            f"{workdir} keeps no best checkpoint: it was trained without train.keep_best"
        )
    graphdef, abstract = abstract_state(exp)
    shardings = state_shardings(abstract, mesh, exp.parallel)
    folder = Path(workdir) / (BEST_DIR if best else "checkpoints")
    checkpointer = Checkpointer(folder, keep=exp.train.keep_checkpoints, read_only=True)
    try:
        if step is not None:
            state = checkpointer.restore(step, abstract, shardings, model_only=model_only)
        else:
            restored = checkpointer.restore_latest(abstract, shardings, model_only=model_only)
            if restored is None:
                what = "best checkpoint (no evaluation has run)" if best else "checkpoint"
                raise CheckpointError(f"{workdir} has no {what} yet; train first")
            step, state = restored.step, restored.state
    finally:
        checkpointer.close()
    if model_only:
        model_graphdef = nnx.split(nnx.merge(graphdef, abstract)[0])[0]
        return step, model_graphdef, state[0]
    return step, graphdef, state
