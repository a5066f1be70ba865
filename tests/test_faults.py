"""Preemption and crashes lose nothing: SIGTERM saves and exits, and a training process killed
with SIGKILL at random moments (one of them in the middle of a checkpoint save) and restarted
each time ends with exactly the uninterrupted run's state. NaN/inf losses stop or skip."""

import json
import os
import random
import signal
import threading
import time

import jax
import numpy as np
import pytest
from flax import nnx

import mmjax
from mmjax.cli import EXIT_PREEMPTED, main
from mmjax.config import experiment_from, set_value
from mmjax.errors import TrainingError
from mmjax.parallel import data_mesh
from mmjax.train.workdir import restore_trained
from tests.launch import (
    preempted_step,
    saved_steps,
    start_train,
    tiny_args,
    tiny_config,
    wait_for,
)

STEPS = 80
SETTINGS = ("train.checkpoint_every=10", "train.keep_checkpoints=2", "train.eval_splits=")


def _state(workdir, cfg):
    """(step, {path: array}) of the workdir's latest checkpoint; random keys as their data."""
    step, _, state = restore_trained(workdir, experiment_from(cfg.to_dict()), data_mesh())
    leaves = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(state))
    keys_as_data = {
        jax.tree_util.keystr(path): (
            jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        )
        for path, x in leaves
    }
    return step, jax.device_get(keys_as_data)


def _assert_same_state(workdir, reference, cfg, what):
    (step_a, a), (step_b, b) = _state(workdir, cfg), _state(reference, cfg)
    assert step_a == step_b == STEPS
    assert a.keys() == b.keys()
    differ = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not differ, f"after {what}, these differ from the uninterrupted run: {differ}"


def _partial_saves(workdir):
    """Orbax's temporary folders: checkpoints being (or left half) written."""
    folder = workdir / "checkpoints"
    if not folder.is_dir():
        return set()
    return {p.name for p in folder.iterdir() if "orbax-checkpoint-tmp" in p.name}


def _progressed(workdir, before):
    return lambda: max(saved_steps(workdir), default=0) > max(before, default=0)


@pytest.fixture(scope="module")
def uninterrupted(avdigits_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    mmjax.train(tiny_config(avdigits_root, STEPS, *SETTINGS), workdir, progress=False)
    return workdir


def _assert_refused_while_running(work, args, pid, capsys):
    capsys.readouterr()
    assert main(["train", "--workdir", str(work), *args]) == 2
    err = capsys.readouterr().err
    assert f"--workdir {work} is in use by another run (PID {pid} on host" in err, err


def test_kill_9_at_three_moments_loses_nothing(avdigits_root, uninterrupted, tmp_path, capsys):
    rng = random.Random(6)
    args = tiny_args(avdigits_root, STEPS, *SETTINGS)
    work = tmp_path / "run"
    history = []
    for moment in ("random", "during a save", "random"):
        before, stale = saved_steps(work), _partial_saves(work)
        proc = start_train(work, args)
        try:
            if moment == "during a save":
                wait_for(lambda: _partial_saves(work) - stale, 240, "a save", proc)  # noqa: B023
            else:
                wait_for(_progressed(work, before), 240, "a new checkpoint", proc)
                if not history:  # a second run on the live run's workdir is refused
                    _assert_refused_while_running(work, args, proc.pid, capsys)
                time.sleep(rng.uniform(0.0, 0.2))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            proc.kill()
        torn = bool(_partial_saves(work) - stale)
        history.append((moment, saved_steps(work), torn))
        if moment == "during a save":
            assert torn, "the kill was meant to land while a checkpoint was being written"
    print(f"(moment, checkpoints left, a half-written save left) after each SIGKILL: {history}")
    assert max(saved_steps(work)) < STEPS, history
    # The fourth start runs to the end (in this process, to spare a start-up).
    cfg = tiny_config(avdigits_root, STEPS, *SETTINGS)
    latest = max(saved_steps(work))
    results = mmjax.train(cfg, work, progress=False)
    assert results["completed"] and results["started_at_step"] == latest
    assert results["steps_this_call"] == STEPS - latest
    steps = [json.loads(line)["step"] for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS, "a step logged twice or out of order"
    _assert_same_state(work, uninterrupted, cfg, f"SIGKILLs with checkpoints at {history}")


def test_sigterm_saves_exits_75_and_resumes(avdigits_root, uninterrupted, tmp_path, capsys):
    def preempt_after_a_checkpoint():
        wait_for(_progressed(tmp_path, []), 240, "a first checkpoint")
        os.kill(os.getpid(), signal.SIGTERM)

    # Should the notice come after the run, it must not end pytest.
    outside_the_run = signal.signal(signal.SIGTERM, lambda *_: None)
    notice = threading.Thread(target=preempt_after_a_checkpoint)
    notice.start()
    try:
        args = tiny_args(avdigits_root, STEPS, *SETTINGS)
        code = main(["train", "--workdir", str(tmp_path), *args])
        notice.join()
    finally:
        signal.signal(signal.SIGTERM, outside_the_run)
    err = capsys.readouterr().err
    assert code == EXIT_PREEMPTED == 75, err
    stopped = preempted_step(err)
    assert stopped == max(saved_steps(tmp_path)) < STEPS, (stopped, saved_steps(tmp_path))
    assert json.loads((tmp_path / "results.json").read_text())["preempted"]
    cfg = tiny_config(avdigits_root, STEPS, *SETTINGS)
    results = mmjax.train(cfg, tmp_path, progress=False)
    assert results["completed"] and results["started_at_step"] == stopped
    assert results["steps_this_call"] == STEPS - stopped
    _assert_same_state(tmp_path, uninterrupted, cfg, f"a SIGTERM at step {stopped}")


# A learning rate of 1e30 makes step 1's update overflow, so the loss from step 2 on is NaN/inf.
OVERFLOW = ("optim.learning_rate=1e30", "optim.warmup_steps=0", "optim.grad_clip=0.0")


def test_a_nonfinite_loss_stops_and_keeps_the_good_checkpoint(avdigits_root, tmp_path):
    cfg = tiny_config(avdigits_root, 4, "train.checkpoint_every=1", *OVERFLOW)
    with pytest.raises(TrainingError, match=r"step 2: .*Last good checkpoint: step 1 in"):
        mmjax.train(cfg, tmp_path, progress=False)
    assert saved_steps(tmp_path) == [1]
    step, state = _state(tmp_path, cfg)
    assert step == 1 and all(np.isfinite(v).all() for v in state.values())


def test_the_skip_policy_drops_nonfinite_steps(avdigits_root, tmp_path):
    # The same program as above (the policy acts on the host), so it is compiled once.
    cfg = tiny_config(avdigits_root, 4, "train.checkpoint_every=1", *OVERFLOW)
    set_value(cfg, "train.on_nonfinite", "skip")
    set_value(cfg, "train.eval_splits", ())  # what is checked is the training, not an eval
    set_value(cfg, "train.log_every", 1)
    with pytest.warns(RuntimeWarning, match="the batch was skipped"):
        results = mmjax.train(cfg, tmp_path, progress=False)
    assert results["completed"]
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [0, 1, 1, 1]
    _, state = _state(tmp_path, cfg)
    assert all(np.isfinite(v).all() for v in state.values())
