"""Real multi-process training on JAX's own runtime: 2 processes x 2 CPU devices on localhost
(gloo collectives), against 1 process x 4 devices; and a dead process ending its peer."""

import json
import os
import signal
import time

import jax
import numpy as np
import pytest
from flax import nnx

import mmjax
from mmjax import distributed
from mmjax.cli import main
from mmjax.config import experiment_from
from mmjax.data import pipeline
from mmjax.errors import ConfigError
from mmjax.parallel import data_mesh
from mmjax.train.checkpoint import Checkpointer
from mmjax.train.state import abstract_state, state_shardings
from mmjax.train.workdir import read_experiment, restore_trained
from tests.launch import (
    free_port,
    preempted_step,
    saved_steps,
    start_train,
    tiny_args,
    tiny_config,
    wait_for,
)

STEPS = 20


def _cluster(workdir, args, *extra, command="train"):
    cluster = [*args, *extra, "--coordinator", f"localhost:{free_port()}", "--num-processes", "2"]
    return [
        start_train(workdir, [*cluster, "--process-id", str(i)], devices=2, command=command)
        for i in range(2)
    ]


def _params(workdir, exp):
    _, graphdef, state = restore_trained(workdir, exp, data_mesh())
    return jax.device_get(nnx.to_flat_state(nnx.state(nnx.merge(graphdef, state)[0], nnx.Param)))


def test_two_processes_train_like_one_through_a_preemption(avdigits_root, tmp_path, capsys):
    settings = ("train.eval_splits=test", "train.checkpoint_every=5")
    args = tiny_args(avdigits_root, STEPS, *settings)
    work = tmp_path / "two"
    procs = _cluster(work, args)
    try:
        wait_for(lambda: saved_steps(work), 240, "a first checkpoint", procs[0])
        # Process 0 holds the workdir for the group: another run on it is refused.
        capsys.readouterr()
        assert main(["train", "--workdir", str(work), *args]) == 2
        refusal = capsys.readouterr().err
        assert f"in use by another run (PID {procs[0].pid} on host" in refusal, refusal
        assert "process 0 of 2" in refusal
        # The notice reaches one process; JAX's preemption service stops both at one step.
        os.kill(procs[1].pid, signal.SIGTERM)
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [75, 75], [err[-1500:] for _, err in outs]
    stopped = {preempted_step(err) for _, err in outs}
    assert len(stopped) == 1 and max(saved_steps(work)) in stopped and min(stopped) < STEPS
    print(f"both processes stopped at step {stopped} after a SIGTERM to process 1")

    procs = _cluster(work, args)  # the restart resumes from that checkpoint
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err

    cfg = tiny_config(avdigits_root, STEPS, *settings)
    one = mmjax.train(cfg, tmp_path / "one", progress=False)
    exp = experiment_from(cfg.to_dict())

    two = json.loads((work / "results.json").read_text())
    assert two["devices"] == one["devices"] == 4
    assert two["steps"] == STEPS and two["examples"] == one["examples"]
    assert two["started_at_step"] in stopped and two["steps_this_call"] == STEPS - min(stopped)
    assert abs(two["accuracy"]["test"] - one["accuracy"]["test"]) < 1e-6
    # Only process 0 prints the results (after gloo's connection lines) and writes the log.
    assert json.loads(outs[0][0][outs[0][0].index("{\n") :])["steps"] == STEPS
    assert "{" not in outs[1][0], outs[1][0]
    steps = [json.loads(r)["step"] for r in (work / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS, steps

    a, b = dict(_params(work, exp)), dict(_params(tmp_path / "one", exp))
    assert a.keys() == b.keys()
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    print(f"largest |2 processes x 2 devices - 1 x 4| over {len(a)} parameters: {worst:.2e}")
    assert worst < 1e-5, f"2 x 2 devices differ from 1 x 4 by up to {worst}"

    # One process resuming the two processes' run would read the batches the 1 x 4 run reads.
    after_two, after_one = _next_batch(work, exp), _next_batch(tmp_path / "one", exp)
    for key in after_one:
        np.testing.assert_array_equal(after_two[key], after_one[key])


def _next_batch(workdir, exp):
    """The batch a run resumed (in this one process) from `workdir`'s latest checkpoint reads."""
    data_iter = iter(
        pipeline.train_dataset(exp.data, exp.model.modalities, exp.train.batch_size, 0)
    )
    _, abstract = abstract_state(exp)
    checkpointer = Checkpointer(workdir / "checkpoints", keep=2, read_only=True)
    try:
        restored = checkpointer.restore_latest(
            abstract, state_shardings(abstract, data_mesh()), data_iter
        )
    finally:
        checkpointer.close()
    assert restored.step == STEPS
    return next(data_iter)


def test_two_processes_sweep_like_one(avdigits_root, tmp_path):
    """`mmjax sweep` of 2 seeds on 2 processes x 2 devices: each copy equals the copy of the
    same sweep on 1 process x 4 devices, and its files are written once."""
    steps, settings = 6, ("train.eval_splits=test",)
    procs = _cluster(
        tmp_path / "two",
        tiny_args(avdigits_root, steps, *settings),
        "--seeds",
        "0",
        "1",
        command="sweep",
    )
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    cfg = tiny_config(avdigits_root, steps, *settings)
    one = mmjax.sweep(cfg, tmp_path / "one", seeds=[0, 1], progress=False)
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["devices"] == one["devices"] == 4 and two["copies"].keys() == one["copies"].keys()
    for name, copy in one["copies"].items():
        assert abs(two["copies"][name]["accuracy"]["test"] - copy["accuracy"]["test"]) < 1e-6
        exp = experiment_from(read_experiment(tmp_path / "one" / name)["config"])
        a, b = (
            dict(_params(tmp_path / "two" / name, exp)),
            dict(_params(tmp_path / "one" / name, exp)),
        )
        worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in b)
        assert worst < 1e-5, f"copy {name}: 2 x 2 devices differ from 1 x 4 by up to {worst}"
        rows = (tmp_path / "two" / name / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(r)["step"] for r in rows] == [
            json.loads(r)["step"]
            for r in (tmp_path / "one" / name / "metrics.jsonl").read_text().splitlines()
        ]


def test_a_dead_process_ends_its_peer_in_bounded_time(avdigits_root, tmp_path):
    heartbeat = 5
    # The program of the test above (its step count): the compilation cache holds it. The peer
    # is killed at the first checkpoint, so the run cannot get near its end.
    args = tiny_args(avdigits_root, STEPS, "train.checkpoint_every=2")
    procs = _cluster(tmp_path, args, "--heartbeat-timeout", str(heartbeat))
    try:
        wait_for(lambda: saved_steps(tmp_path), 240, "a first checkpoint", procs[0])
        os.kill(procs[1].pid, signal.SIGKILL)
        killed = time.monotonic()
        _, err = procs[0].communicate(timeout=120)
        waited = time.monotonic() - killed
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode != 0
    assert "another task died" in err, err[-2000:]
    print(f"the survivor exited {waited:.1f} s after its peer's SIGKILL (heartbeat {heartbeat} s)")
    assert waited < heartbeat + 30, waited
    # What was saved before the failure still restores.
    cfg = tiny_config(avdigits_root, STEPS)
    step, _, _ = restore_trained(tmp_path, experiment_from(cfg.to_dict()), data_mesh())
    assert step in saved_steps(tmp_path)


def test_the_cluster_comes_from_flags_then_environment(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    for name in ("COORDINATOR", "NUM_PROCESSES", "PROCESS_ID", "DISTRIBUTED", "HEARTBEAT_TIMEOUT"):
        monkeypatch.delenv(f"MMJAX_{name}", raising=False)
    assert not distributed.initialize()  # nothing described: one process, no call
    monkeypatch.setenv("MMJAX_COORDINATOR", "host0:1234")
    monkeypatch.setenv("MMJAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("MMJAX_PROCESS_ID", "3")
    assert distributed.initialize()
    assert distributed.initialize(process_id=1, heartbeat_timeout_s=7)  # a flag wins
    monkeypatch.setenv("MMJAX_DISTRIBUTED", "auto")
    for name in ("COORDINATOR", "NUM_PROCESSES", "PROCESS_ID"):
        monkeypatch.delenv(f"MMJAX_{name}")
    assert distributed.initialize()  # JAX detects the cluster
    assert [a for a, _ in calls] == [("host0:1234", 4, 3), ("host0:1234", 4, 1), (None, None, None)]
    assert [k["heartbeat_timeout_seconds"] for _, k in calls] == [100, 7, 100]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"coordinator": "host0:1234"}, "missing --num-processes, --process-id"),
        ({"coordinator": "host0", "num_processes": 2, "process_id": 0}, "HOST:PORT"),
        ({"coordinator": "h:99999", "num_processes": 2, "process_id": 0}, "HOST:PORT"),
        (
            {"coordinator": "h:1", "num_processes": 2, "process_id": 2},
            r"--process-id must be in \[0, 2\)",
        ),
        (
            {"coordinator": "h:1", "num_processes": 0, "process_id": 0},
            "--num-processes must be >= 1",
        ),
        ({"heartbeat_timeout_s": 0, "auto": True}, "--heartbeat-timeout must be >= 1"),
    ],
)
def test_a_wrong_cluster_description_is_a_config_error(monkeypatch, kwargs, message):
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: pytest.fail("started"))
    for name in ("COORDINATOR", "NUM_PROCESSES", "PROCESS_ID", "DISTRIBUTED", "HEARTBEAT_TIMEOUT"):
        monkeypatch.delenv(f"MMJAX_{name}", raising=False)
    with pytest.raises(ConfigError, match=message):
        distributed.initialize(**kwargs)
