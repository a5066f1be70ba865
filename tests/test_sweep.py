"""`mmjax sweep`: each copy of a vmapped sweep equals its single run (seeds, a traced learning
rate, a shared batch order, across a resume); its copies are workdirs; bad sweeps are refused."""

import json

import jax
import numpy as np
import pytest

import mmjax
from mmjax.config import set_value
from mmjax.errors import CheckpointError, ConfigError
from mmjax.train.loop import evaluate_workdir
from mmjax.train.sweep import sweep
from tests.tensorboard_events import assert_tensorboard_equals_metrics
from tests.test_train_loop import _params

STEPS = 6
LEARNING_RATES = ["0.002", "0.004"]  # the tiny config's own, and twice it


def tiny(root, **settings):
    cfg = mmjax.load_config_file("configs/avdigits_late.py:tiny")
    set_value(cfg, "data.root", str(root))
    set_value(cfg, "train.steps", STEPS)
    set_value(cfg, "train.log_every", 3)
    set_value(cfg, "train.checkpoint_every", 3)
    set_value(cfg, "train.eval_splits", ("test",))
    for key, value in settings.items():
        set_value(cfg, key.replace("__", "."), value)
    return cfg


def _max_difference(a, b) -> float:
    def diff(x, y):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return float(np.any(jax.random.key_data(x) != jax.random.key_data(y)))
        return float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))

    return max(jax.tree.leaves(jax.tree.map(diff, a, b)))


def _rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(copy_dir, single_dir):
    """Same final step and parameters (to float rounding), the same logged losses, the same
    evaluation."""
    (step, state), (single_step, single_state) = _params(copy_dir), _params(single_dir)
    assert step == single_step == STEPS
    # Float rounding, through Adam: its update m / sqrt(v) is O(1) even for a gradient that
    # is all rounding, so a vmapped and a plain program may part by ~lr per step. Measured:
    # 4.1e-5 for the lr 0.004 copy with the log-mel's DFT as a matmul (several devices). A
    # copy given the other learning rate (0.001) would part by ~3e-3 per step.
    assert _max_difference(state, single_state) < 1e-4
    rows, single_rows = _rows(copy_dir), _rows(single_dir)
    assert [r["step"] for r in rows] == [r["step"] for r in single_rows] == [3, 6]
    for row, single_row in zip(rows, single_rows, strict=True):
        assert row["loss"] == pytest.approx(single_row["loss"], rel=1e-5, abs=1e-6)
    results = json.loads((copy_dir / "results.json").read_text())
    single = json.loads((single_dir / "results.json").read_text())
    assert results["accuracy"] == single["accuracy"]
    for split, loss in single["loss"].items():
        assert results["loss"][split] == pytest.approx(loss, rel=1e-5)


@pytest.fixture(scope="module")
def swept(avdigits_root, tmp_path_factory):
    """Seeds 0 and 1 x two learning rates, each copy with its own batches, vmapped (the GPU and
    TPU program); interrupted at step 3 and resumed."""
    workdir = tmp_path_factory.mktemp("sweep") / "sweep"
    grid = {"seeds": [0, 1], "set_each": {"optim.learning_rate": LEARNING_RATES}}
    grid["program"] = "vmap"
    first = sweep(tiny(avdigits_root), workdir, stop_after=3, progress=False, **grid)
    assert first["steps"] == 3 and not first["completed"] and first["copies"] == {}
    resumed = sweep(tiny(avdigits_root), workdir, progress=False, **grid)
    assert (resumed["started_at_step"], resumed["steps_this_call"]) == (3, resumed["steps"] - 3)
    return workdir, resumed


def test_copies_equal_their_single_runs(avdigits_root, swept, tmp_path):
    workdir, results = swept
    names = ["seed0-learning_rate=0.002", "seed0-learning_rate=0.004"]
    names += ["seed1-learning_rate=0.002", "seed1-learning_rate=0.004"]
    assert list(results["copies"]) == names and results["completed"]
    mmjax.train(tiny(avdigits_root), tmp_path / "seed0", progress=False)
    mmjax.train(
        tiny(avdigits_root, train__seed=1, optim__learning_rate=0.004),
        tmp_path / "seed1-lr",
        progress=False,
    )
    assert_same_run(workdir / names[0], tmp_path / "seed0")
    assert_same_run(workdir / names[3], tmp_path / "seed1-lr")
    # The copies did differ: another seed, another learning rate.
    assert _max_difference(_params(workdir / names[0])[1], _params(workdir / names[1])[1]) > 1e-4
    assert _max_difference(_params(workdir / names[0])[1], _params(workdir / names[2])[1]) > 1e-4


def test_copies_are_workdirs(swept):
    workdir, results = swept
    copy = workdir / "seed1-learning_rate=0.002"
    record = json.loads((copy / "experiment.json").read_text())
    assert record["config"]["train"]["seed"] == 1
    assert record["config"]["optim"]["learning_rate"] == 0.002
    evaluated = evaluate_workdir(copy, ("test",))["test"]
    assert evaluated["accuracy"] == results["copies"][copy.name]["accuracy"]["test"]
    assert json.loads((workdir / "results.json").read_text()) == results
    events = assert_tensorboard_equals_metrics(copy)
    (final,) = events.Scalars("eval/test/accuracy")
    assert final.value == pytest.approx(evaluated["accuracy"])
    plan = json.loads((workdir / "sweep.json").read_text())
    assert [c["name"] for c in plan["copies"]] == list(results["copies"])
    with pytest.raises(CheckpointError, match=r"is a sweep's folder.*seed0-learning_rate=0\.002"):
        evaluate_workdir(workdir)
    with pytest.raises(ConfigError, match="is a sweep's folder: resume it with `mmjax sweep`"):
        mmjax.train(json.loads((copy / "experiment.json").read_text())["config"], workdir)


def test_resume_with_other_settings_is_refused(avdigits_root, swept):
    workdir, _ = swept
    other = {"optim.learning_rate": ["0.002", "0.008"]}
    with pytest.raises(CheckpointError, match=r"other settings.*copies"):
        sweep(tiny(avdigits_root), workdir, seeds=[0, 1], set_each=other, progress=False)


def test_shared_order_copy_equals_the_run_with_that_data_seed(avdigits_root, tmp_path):
    """With one batch order, copy seed1 reads seed 0's batches: it is the single run with
    train.seed=1 and train.data_seed=0, as its experiment.json says. The copies' steps side by
    side (CPU's program)."""
    results = sweep(
        tiny(avdigits_root),
        tmp_path / "sweep",
        seeds=[0, 1],
        shared_order=True,
        program="unrolled",
        progress=False,
    )
    copy = tmp_path / "sweep" / "seed1"
    config = json.loads((copy / "experiment.json").read_text())["config"]
    assert config["train"]["data_seed"] == 0 and results["completed"]
    mmjax.train(
        tiny(avdigits_root, train__seed=1, train__data_seed=0), tmp_path / "single", progress=False
    )
    assert_same_run(copy, tmp_path / "single")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"seeds": list(range(10**7))}, "a sweep of 10000000 copies needs at least .* GiB"),
        ({"set_each": {"model.fusion.hidden": ["8", "16"]}}, "may differ only in"),
        ({"set_each": {"train.seed": ["1"]}}, "give the seeds with --seeds"),
        (
            {"set_each": {"data.image_noise": ["0", "0.2"]}, "shared_order": True},
            "changes each copy's batches: drop --shared-order",
        ),
        ({"set_each": {"optim.grad_clip": ["0", "1"]}}, "must all be > 0 or all 0"),
        ({"set_each": {"optim.learning_rate": ["0.1", "fast"]}}, r"--set-each optim\.learn"),
        ({"set_each": {"optim.learning_rate": ["-1"]}}, r"copy seed0-learning_rate=-1: .* > 0"),
        ({"seeds": [3, 3]}, "a seed is given twice"),
        ({"program": "pmap"}, "--program 'pmap': one of auto, vmap, unrolled"),
    ],
)
def test_bad_sweeps_are_refused_before_training(avdigits_root, tmp_path, kwargs, error):
    with pytest.raises(ConfigError, match=error):
        sweep(tiny(avdigits_root), tmp_path / "sweep", progress=False, **kwargs)
    assert not (tmp_path / "sweep" / "checkpoints").exists()


def test_single_run_only_settings_and_folders_are_refused(avdigits_root, tmp_path):
    cfg = tiny(avdigits_root, train__utilisation_every=2)
    with pytest.raises(ConfigError, match=r"utilisation_every=2 is not available in a sweep"):
        sweep(cfg, tmp_path / "sweep", progress=False)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "experiment.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds a single run"):
        sweep(tiny(avdigits_root), tmp_path / "run", progress=False)
