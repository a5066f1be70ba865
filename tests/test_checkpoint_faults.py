"""Checkpoint faults: corrupt or partial checkpoints, interrupted saves, failed writes."""

import os
import resource
import shutil
import signal
import warnings
from pathlib import Path

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import mmjax
from mmjax.config import experiment_from, set_value
from mmjax.errors import CheckpointError
from mmjax.parallel import data_mesh
from mmjax.train.checkpoint import Checkpointer
from mmjax.train.workdir import restore_trained
from tests.trees import assert_same_leaves

# A failed read or write leaves orbax coroutines and event-loop callbacks that fail when
# garbage-collected; pytest reports them as unraisable. They are orbax's, not these tests'.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _state(step: int) -> nnx.State:
    """A 256 KiB state whose values tell the step that saved it."""
    return nnx.state(nnx.Linear(128, 512, rngs=nnx.Rngs(step)))


def _shardings(state: nnx.State) -> nnx.State:
    return jax.tree.map(lambda x: x.sharding, state)


def _iterator() -> grain.DatasetIterator:
    return iter(grain.MapDataset.range(1000).to_iter_dataset())


def _save_steps(directory: Path, steps: tuple[int, ...], keep: int = 3) -> None:
    """Checkpoints of `steps`; the iterator has yielded `step` elements at each."""
    checkpointer = Checkpointer(directory, keep=keep)
    data_iter = _iterator()
    taken = 0
    for step in steps:
        for _ in range(step - taken):
            next(data_iter)
        taken = step
        checkpointer.save(step, _state(step), data_iter, {"seed": step}, {"loss": 1.0 / step})
    checkpointer.close()


def _kernel(state: nnx.State) -> np.ndarray:
    return np.asarray(state["kernel"][...])


def _largest_file(path: Path) -> Path:
    """The array data of a state item (OCDBT keeps it in one file per write)."""
    return max((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _truncate_state(step_dir: Path) -> None:
    os.truncate(_largest_file(step_dir / "state"), 1000)


def _garbage_config(step_dir: Path) -> None:
    (step_dir / "config" / "metadata").write_text("{not json")


def _drop_data_iter(step_dir: Path) -> None:
    shutil.rmtree(step_dir / "data_iter")


def _garbage_data_iter(step_dir: Path) -> None:
    next(step_dir.joinpath("data_iter").glob("process_*.json")).write_text("{")


@pytest.mark.parametrize(
    "corrupt", [_truncate_state, _garbage_config, _drop_data_iter, _garbage_data_iter]
)
def test_unreadable_newest_is_set_aside_and_older_restored(tmp_path, corrupt):
    _save_steps(tmp_path, (5, 10))
    corrupt(tmp_path / "10")
    checkpointer = Checkpointer(tmp_path, keep=3)
    data_iter = _iterator()
    target = _state(0)
    with pytest.warns(
        UserWarning,
        match=rf"step 10 at {tmp_path}/10 is unreadable .*moved it to "
        rf"{tmp_path}/10\.corrupt and fell back to step 5",
    ):
        restored = checkpointer.restore_latest(target, _shardings(target), data_iter)
    checkpointer.close()
    assert (restored.step, restored.config, restored.metrics) == (5, {"seed": 5}, {"loss": 0.2})
    np.testing.assert_array_equal(_kernel(restored.state), _kernel(_state(5)))
    assert next(data_iter) == 5  # the iterator of step 5, not of step 10
    assert _listing(tmp_path) == ["10.corrupt", "5"]


def test_set_aside_step_is_saved_again_and_never_garbage_collected(tmp_path):
    _save_steps(tmp_path, (5, 10), keep=2)
    target = _state(0)
    for aside in ("10.corrupt", "10.corrupt-2"):  # the same step goes bad twice: a free name
        _truncate_state(tmp_path / "10")
        checkpointer = Checkpointer(tmp_path, keep=2)
        with pytest.warns(UserWarning, match=rf"moved it to {tmp_path}/{aside} and fell back"):
            assert checkpointer.restore_latest(target, _shardings(target)).step == 5
        checkpointer.save(10, _state(10), None, {}, {})
        checkpointer.close()
        assert checkpointer.manager.all_steps() == [5, 10]
    checkpointer = Checkpointer(tmp_path, keep=2)
    checkpointer.save(15, _state(15), None, {}, {})
    checkpointer.close()
    assert _listing(tmp_path) == ["10", "10.corrupt", "10.corrupt-2", "15"]


def test_read_only_skips_an_unreadable_step_without_moving_it(tmp_path):
    _save_steps(tmp_path, (5, 10))
    _garbage_config(tmp_path / "10")
    before = _listing(tmp_path)
    checkpointer = Checkpointer(tmp_path, keep=3, read_only=True)
    target = _state(0)
    with pytest.warns(
        UserWarning, match=r"step 10 at .*/10 is unreadable .*nothing moved.*fell back to step 5"
    ):
        restored = checkpointer.restore_latest(target, _shardings(target))
    checkpointer.close()
    assert restored.step == 5
    assert _listing(tmp_path) == before


def test_no_readable_step_raises_and_moves_nothing(tmp_path):
    _save_steps(tmp_path, (5, 10))
    _truncate_state(tmp_path / "10")
    _drop_data_iter(tmp_path / "5")
    before = _listing(tmp_path)
    checkpointer = Checkpointer(tmp_path, keep=3)
    target = _state(0)
    with pytest.raises(
        CheckpointError, match=rf"no checkpoint in {tmp_path} reads back \(tried steps \[10, 5\]"
    ):
        checkpointer.restore_latest(target, _shardings(target), _iterator())
    checkpointer.close()
    assert _listing(tmp_path) == before


def test_empty_directory_and_config_check(tmp_path):
    target = _state(0)
    checkpointer = Checkpointer(tmp_path, keep=3)
    assert checkpointer.restore_latest(target, _shardings(target)) is None
    checkpointer.close()

    _save_steps(tmp_path, (5, 10))
    _truncate_state(tmp_path / "10")
    checked = []

    def refuse(step, config):
        checked.append((step, config))
        raise CheckpointError("other settings")

    checkpointer = Checkpointer(tmp_path, keep=3)
    with pytest.raises(CheckpointError, match="other settings"):
        checkpointer.restore_latest(target, _shardings(target), check_config=refuse)
    checkpointer.close()
    assert checked == [(10, {"seed": 10})]  # checked before the state was read
    assert _listing(tmp_path) == ["10", "5"]


def test_leftover_of_an_interrupted_save_is_ignored_and_removed(tmp_path):
    _save_steps(tmp_path, (5, 10))
    partial = tmp_path / "15.orbax-checkpoint-tmp"  # what a save killed mid-write leaves
    shutil.copytree(tmp_path / "10", partial)
    (partial / "commit_success.txt").unlink()
    _truncate_state(partial)
    checkpointer = Checkpointer(tmp_path, keep=3)
    assert checkpointer.manager.all_steps() == [5, 10]
    target = _state(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert checkpointer.restore_latest(target, _shardings(target)).step == 10
    checkpointer.save(15, _state(15), None, {}, {})
    checkpointer.close()
    assert not partial.exists() and _listing(tmp_path) == ["10", "15", "5"]
    checkpointer = Checkpointer(tmp_path, keep=3, read_only=True)
    restored = checkpointer.restore(15, target, _shardings(target))
    checkpointer.close()
    np.testing.assert_array_equal(_kernel(restored), _kernel(_state(15)))


@pytest.mark.parametrize("surfaces_at", ["next save", "close"])
def test_failed_write_names_the_step_and_keeps_earlier_checkpoints(tmp_path, surfaces_at):
    _save_steps(tmp_path, (5, 10), keep=2)
    checkpointer = Checkpointer(tmp_path, keep=2)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Writes past 64 KiB fail with EFBIG, the OS error path of a full disk (ENOSPC).
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(
            CheckpointError,
            match=rf"saving checkpoint step 15 in {tmp_path} failed \(EFBIG: File too large\); "
            r"the checkpoints of steps \[5, 10\] remain intact",
        ):
            checkpointer.save(15, _state(15), _iterator(), {}, {})
            if surfaces_at == "next save":
                checkpointer.save(20, _state(20), _iterator(), {}, {})
            checkpointer.close()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    checkpointer.close()
    assert {"5", "10"} <= set(_listing(tmp_path))  # keep=2 deleted nothing for the failed save
    checkpointer = Checkpointer(tmp_path, keep=2)
    target = _state(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        restored = checkpointer.restore_latest(target, _shardings(target), _iterator())
    assert restored.step == 10  # the half-written step 15 is not a candidate
    checkpointer.save(15, _state(15), None, {}, {})
    checkpointer.close()
    assert checkpointer.manager.all_steps() == [10, 15]


def test_train_resumes_past_a_corrupt_checkpoint(avdigits_root, tmp_path):
    # The tiny late-fusion run of 20 steps: test_train_loop compiles the same program.
    cfg = mmjax.load_config_file("configs/avdigits_late.py:tiny")
    set_value(cfg, "data.root", str(avdigits_root))
    set_value(cfg, "train.steps", 20)
    set_value(cfg, "train.checkpoint_every", 5)
    set_value(cfg, "train.keep_checkpoints", 3)
    set_value(cfg, "train.eval_splits", ())
    checkpoints = tmp_path / "checkpoints"
    mmjax.train(cfg, tmp_path, stop_after=10, progress=False)
    assert _listing(checkpoints) == ["10", "5"]
    shutil.copytree(checkpoints / "10" / "state", tmp_path / "state_10")
    _truncate_state(checkpoints / "10")

    with pytest.warns(
        UserWarning, match=rf"step 10 at {checkpoints}/10 is unreadable .*fell back to step 5"
    ):
        results = mmjax.train(cfg, tmp_path, progress=False)
    assert results["completed"] and results["steps"] == 20
    assert (results["started_at_step"], results["steps_this_call"]) == (5, 15)
    assert _listing(checkpoints) == ["10", "10.corrupt", "15", "20"]
    # Resumed from step 5 with step 5's data iterator, the run saved the same step 10 again.
    reader = ocp.StandardCheckpointer()
    assert_same_leaves(
        reader.restore(checkpoints / "10" / "state"), reader.restore(tmp_path / "state_10")
    )

    _garbage_config(checkpoints / "20")  # eval/predict skip it but write nothing
    before = _listing(checkpoints)
    with pytest.warns(UserWarning, match=r"step 20 at .* nothing moved\) and fell back to step 15"):
        step, _, state = restore_trained(tmp_path, experiment_from(cfg.to_dict()), data_mesh())
    assert step == 15 and _listing(checkpoints) == before
    assert_same_leaves(nnx.to_pure_dict(state), reader.restore(checkpoints / "15" / "state"))
