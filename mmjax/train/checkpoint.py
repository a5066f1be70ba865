"""Orbax checkpoints of the train state, the data-iterator state, the config and the metrics.

Layout: WORKDIR/checkpoints/<step>/{state,data_iter,config,metrics}. The state is saved as a
pure dict (readable without mmjax classes) and restored onto the current mesh through abstract
targets that carry the current shardings, so a run can resume on another device count.
"""

from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx

from mmjax.errors import CheckpointError


class Checkpointer:
    """One long-lived Orbax CheckpointManager (async saves; `close` waits for them)."""

    def __init__(self, directory: Path, *, keep: int, read_only: bool = False):
        directory = Path(directory).absolute()
        if read_only and not directory.is_dir():
            raise CheckpointError(f"{directory.parent} has no checkpoint yet; train first")
        if read_only:
            options = ocp.CheckpointManagerOptions(
                read_only=True, create=False, max_to_keep=None, save_interval_steps=0
            )
        else:
            options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(
        self,
        step: int,
        state: nnx.State,
        data_iter: grain.DatasetIterator | None,
        config: dict[str, Any],
        metrics: dict[str, Any],
    ) -> None:
        items = {
            "state": ocp.args.StandardSave(nnx.to_pure_dict(state)),
            "config": ocp.args.JsonSave(config),
            "metrics": ocp.args.JsonSave(metrics),
        }
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
        self.manager.save(step, args=ocp.args.Composite(**items))

    def saved_json(self, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The experiment config and the metrics stored with checkpoint `step`."""
        items = {"config": ocp.args.JsonRestore(), "metrics": ocp.args.JsonRestore()}
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:  # orbax raises many types; the cause is kept below
            raise CheckpointError(f"checkpoint step {step}: unreadable config ({err})") from err
        return restored["config"], restored["metrics"]

    def restore(
        self,
        step: int,
        target: nnx.State,
        shardings: nnx.State,
        data_iter: grain.DatasetIterator | None = None,
    ) -> nnx.State:
        """Restore `step` into the structure of `target` with `shardings`; data_iter in place."""
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            nnx.to_pure_dict(target),
            nnx.to_pure_dict(shardings),
        )
        items = {"state": ocp.args.StandardRestore(abstract)}
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:  # orbax raises many types; the cause is kept below
            raise CheckpointError(
                f"checkpoint step {step} in {self.manager.directory} does not match this model "
                f"(different architecture or a corrupt file): {type(err).__name__}: {err}"
            ) from err
        state = jax.tree.map(lambda x: x, target)  # a copy whose leaves are replaced below
        nnx.replace_by_pure_dict(state, restored["state"])
        return state

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
