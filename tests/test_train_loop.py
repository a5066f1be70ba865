"""The trainer on a real (small) AV-Digits build: files written, exact resume, safe workdirs."""

import io
import json
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image
from tensorboardX import SummaryWriter

import mmjax
from mmjax.config import set_value
from mmjax.train.run_lock import LOCK_FILE, workdir_lock
from tests.tensorboard_events import assert_tensorboard_equals_metrics
from tests.trees import assert_same_leaves


def tiny_config(avdigits_root, model: str = "late", steps: int = 20):
    cfg = mmjax.load_config_file(f"configs/avdigits_{model}.py:tiny")
    set_value(cfg, "data.root", str(avdigits_root))
    set_value(cfg, "train.steps", steps)
    set_value(cfg, "train.eval_splits", ("test", "test_human"))
    return cfg


def _params(workdir):
    """The latest saved state, read with plain Orbax (no mmjax class, no target)."""
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    with ocp.CheckpointManager(workdir / "checkpoints", options=options) as manager:
        step = manager.latest_step()
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return step, restored["state"]


def _saved(workdir):
    """Every file's modification time but the run lock's, which each call takes and frees."""
    assert (workdir / LOCK_FILE).read_text() == "", "the lock was not released"
    return {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.name != LOCK_FILE}


@pytest.fixture(scope="module")
def trained(avdigits_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    results = mmjax.train(tiny_config(avdigits_root), workdir, progress=False)
    return workdir, results


def test_results_metrics_and_checkpoints(trained):
    workdir, results = trained
    assert results["completed"] and results["steps"] == 20
    assert set(results["accuracy"]) == {"test", "test_human"}
    assert all(0.0 <= a <= 1.0 for a in results["accuracy"].values())
    for split, accuracy in results["accuracy"].items():
        confusion = np.array(results["confusion"][split])
        assert confusion.shape == (10, 10) and confusion.sum() == results["examples"][split]
        assert np.trace(confusion) / confusion.sum() == pytest.approx(accuracy)
        assert 0.0 <= results["macro_f1"][split] <= 1.0
        assert len(results["per_class_accuracy"][split]) == 10
    assert json.loads((workdir / "results.json").read_text()) == results
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        10,
        20,
    ]


def test_tensorboard_holds_the_logged_metrics_config_and_results(trained):
    workdir, results = trained
    events = assert_tensorboard_equals_metrics(workdir)
    for split in ("test", "test_human"):
        (final,) = events.Scalars(f"eval/{split}/accuracy")
        assert (final.step, final.value) == (20, pytest.approx(results["accuracy"][split]))
        (image,) = events.Images(f"eval/{split}/confusion")
        picture = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("L"))
        assert picture.shape[0] > 200 and picture.shape[1] > 200 and picture.std() > 20
    (config,) = events.Tensors("config/text_summary")
    assert b'"late_concat"' in config.tensor_proto.string_val[0]


def test_resume_matches_uninterrupted_run(avdigits_root, trained, tmp_path):
    workdir, _ = trained
    cfg = tiny_config(avdigits_root)
    first = mmjax.train(cfg, tmp_path, stop_after=10, progress=False)
    assert not first["completed"] and first["steps"] == 10
    assert (first["started_at_step"], first["steps_this_call"]) == (0, 10)
    # A row past the checkpoint (as a kill between a log write and a save leaves it) and a
    # line cut short: the resumed run drops both and logs those steps once.
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 15, "loss": -1.0}) + '\n{"step": 1')
    with SummaryWriter(str(tmp_path / "tb")) as writer:  # and TensorBoard's copy of the row
        writer.add_scalar("train/loss", -1.0, 15)
    resumed = mmjax.train(cfg, tmp_path, progress=False)
    assert resumed["completed"] and resumed["steps"] == 20
    assert (resumed["started_at_step"], resumed["steps_this_call"]) == (10, 10)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20] and rows[2]["loss"] > 0
    assert_tensorboard_equals_metrics(tmp_path)
    step_a, state_a = _params(workdir)
    step_b, state_b = _params(tmp_path)
    assert step_a == step_b == 20
    assert_same_leaves(state_a, state_b)
    assert resumed["accuracy"] == pytest.approx(
        json.loads((workdir / "results.json").read_text())["accuracy"]
    )


def test_workdir_of_another_model_is_refused_and_untouched(avdigits_root, trained):
    workdir, _ = trained
    before = _saved(workdir)
    with pytest.raises(mmjax.CheckpointError, match=r"other settings \(.*model\.encoders"):
        mmjax.train(tiny_config(avdigits_root, "audio"), workdir, progress=False)
    assert _saved(workdir) == before


def test_predictor_probabilities(trained, avdigits_root):
    workdir, _ = trained
    predictor = mmjax.load_predictor(workdir)
    rng = np.random.default_rng(0)
    image = rng.random((3, 8, 8, 1), np.float32)
    audio = rng.standard_normal((3, 8000)).astype(np.float32)
    probs = predictor.predict_proba(image=image, audio=audio)
    assert probs.shape == (3, 10)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    one = predictor.predict_proba(image=image[0], audio=audio[0])
    np.testing.assert_allclose(one, probs[0], rtol=1e-4, atol=1e-6)
    image_only = predictor.predict_proba(image=image)
    assert image_only.shape == (3, 10)
    names = predictor.predict(image=image, audio=audio)
    assert names == [predictor.class_names[k] for k in probs.argmax(-1)]
    assert predictor.predict(image=image[0], audio=audio[0]) == names[0]


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ({"image": np.zeros((2, 8), np.float32)}, "image: expected rank 4"),
        ({"image": np.zeros((2, 8, 8), np.float32)}, "image: expected per-sample shape"),
        (
            {"image": np.zeros((2, 16, 16, 1), np.float32)},
            r"image: expected per-sample shape \(8, 8, 1\)",
        ),
        ({"image": np.zeros((2, 8, 8, 1), np.uint8)}, "image: expected a floating dtype"),
        ({"audio": np.full((2, 8000), np.nan, np.float32)}, "audio: expected finite values"),
        ({"text": np.zeros((2, 5), np.int32)}, "text: expected one of the model's keys"),
        (
            {"image": np.zeros((2, 8, 8, 1), np.float32), "audio": np.zeros((3, 8000), np.float32)},
            r"image: expected batch size 3 \(as audio\), got 2",
        ),
        (
            {"image": np.zeros((2, 8, 8, 1), np.float32), "image_mask": np.ones(2, np.int32)},
            "image_mask: expected a bool array",
        ),
    ],
)
def test_predictor_rejects_bad_input(trained, inputs, match):
    predictor = mmjax.load_predictor(trained[0])
    with pytest.raises(mmjax.InputError, match=match):
        predictor.predict_proba(**inputs)


def test_label_out_of_range_is_rejected():
    from mmjax.models import validate_batch

    batch = {"image": np.zeros((2, 8, 8, 1), np.float32), "label": np.array([3, 10])}
    with pytest.raises(mmjax.InputError, match=r"label: expected values in \[0, 10\)"):
        validate_batch(batch, ("image",), num_classes=10)


def test_bfloat16_inputs_are_floating():
    import ml_dtypes

    from mmjax.models import validate_batch

    image = np.zeros((2, 8, 8, 1), ml_dtypes.bfloat16)
    validate_batch({"image": image}, ("image",))  # numpy calls bfloat16 kind "V"
    image[1, 0, 0, 0] = np.inf
    with pytest.raises(mmjax.InputError, match="image: expected finite values"):
        validate_batch({"image": image}, ("image",))


def test_missing_dataset_names_the_prepare_command(tmp_path):
    cfg = mmjax.load_config_file("configs/avdigits_late.py:tiny")
    set_value(cfg, "data.root", str(tmp_path))
    with pytest.raises(mmjax.DataError, match="mmjax data prepare avdigits"):
        mmjax.train(cfg, tmp_path / "run", progress=False)


def test_corrupt_shard_is_refused_before_training(avdigits_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(avdigits_root, root)
    shard = sorted((root / "avdigits").glob("train.array_record-*"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(mmjax.DataError, match=r"train\.array_record-00000.*sha256"):
        mmjax.train(tiny_config(root), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resume_refuses_settings_that_change_the_run(avdigits_root, trained):
    workdir, _ = trained
    before = _saved(workdir)
    cfg = tiny_config(avdigits_root)
    set_value(cfg, "train.batch_size", 32)
    set_value(cfg, "optim.learning_rate", 0.5)
    with pytest.raises(
        mmjax.CheckpointError,
        match=r"optim\.learning_rate: 0\.002 -> 0\.5; train\.batch_size: 16 -> 32",
    ):
        mmjax.train(cfg, workdir, progress=False)
    assert _saved(workdir) == before


def test_resume_accepts_logging_and_eval_changes(avdigits_root, trained, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained[0], copy)
    cfg = tiny_config(avdigits_root)
    set_value(cfg, "train.log_every", 2)
    set_value(cfg, "train.eval_splits", ("test",))
    results = mmjax.train(cfg, copy, progress=False)
    assert results["completed"] and set(results["accuracy"]) == {"test"}
    assert (results["started_at_step"], results["steps_this_call"]) == (20, 0)


def _watching(avdigits_root, **settings):
    cfg = tiny_config(avdigits_root)
    for key, value in {"eval_every": 5, "keep_best": "val/accuracy", **settings}.items():
        set_value(cfg, f"train.{key}", value)
    return cfg


def test_eval_during_training_keeps_the_best_checkpoint(avdigits_root, tmp_path):
    # Evaluations every 4 steps, rows every 5: each evaluation gets a row at its own step.
    results = mmjax.train(_watching(avdigits_root, eval_every=4), tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 5, 8, 10, 12, 15, 16, 20]
    evals = {r["step"]: r["val/accuracy"] for r in rows if "val/accuracy" in r}
    assert list(evals) == [4, 8, 12, 16, 20]
    assert all({"val/loss", "val/macro_f1"} <= set(r) for r in rows if "val/accuracy" in r)
    best_step = max(evals, key=lambda s: (evals[s], -s))  # the first step with the top value
    assert results["best"] == {"val/accuracy": evals[best_step], "step": best_step}
    assert not results["early_stopped"] and results["steps"] == 20
    assert [p.name for p in (tmp_path / "best").iterdir() if p.name.isdigit()] == [str(best_step)]
    best = mmjax.evaluate_workdir(tmp_path, ("val",), best=True)["val"]
    assert best["accuracy"] == pytest.approx(evals[best_step])
    assert mmjax.load_predictor(tmp_path, best=True).step == best_step


def test_early_stopping_resumes_its_patience_exactly(avdigits_root, tmp_path):
    # At learning rate 1e-30 the parameters stay put and no evaluation improves on the first
    # (step 5): with patience 2 the run stops at step 15, also when it was interrupted at step
    # 10 and resumed (a resume that forgot the patience count would run on to step 20).
    cfg = _watching(avdigits_root, early_stop_patience=2, checkpoint_every=5)
    set_value(cfg, "optim.learning_rate", 1e-30)
    first = mmjax.train(cfg, tmp_path, stop_after=10, progress=False)
    assert not first["completed"] and not first["early_stopped"]
    resumed = mmjax.train(cfg, tmp_path, progress=False)
    assert resumed["early_stopped"] and resumed["completed"] and resumed["steps"] == 15
    assert (resumed["started_at_step"], resumed["best"]["step"]) == (10, 5)
    assert set(resumed["accuracy"]) == {"test", "test_human"}
    again = mmjax.train(cfg, tmp_path, progress=False)  # stopped runs stay stopped
    assert again["steps"] == 15 and again["steps_this_call"] == 0


def test_watch_settings_are_checked(avdigits_root, trained, tmp_path):
    for settings, match in [
        ({"keep_best": "val/recall"}, "train.keep_best' must be SPLIT/METRIC"),
        ({"eval_every": 0}, "train.keep_best' must be used with train.eval_every"),
        ({"keep_best": "", "early_stop_patience": 3}, "early_stop_patience' must be used with"),
        ({"keep_best": "nosuch/loss"}, "evaluates split 'nosuch' during training"),
    ]:
        with pytest.raises(mmjax.ConfigError, match=match):
            mmjax.train(_watching(avdigits_root, **settings), tmp_path, progress=False)
    with pytest.raises(mmjax.CheckpointError, match=r"trained without train\.keep_best"):
        mmjax.load_predictor(trained[0], best=True)


def test_a_held_workdir_is_refused_by_train_and_sweep(avdigits_root, tmp_path):
    with workdir_lock(tmp_path):  # another open file: flock refuses it even in this process
        for run in (mmjax.train, mmjax.sweep):
            with pytest.raises(
                mmjax.ConfigError, match=rf"in use by another run \(PID {os.getpid()} on host"
            ):
                run(tiny_config(avdigits_root), tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_FILE]


def test_bad_run_arguments(avdigits_root, tmp_path):
    with pytest.raises(mmjax.ConfigError, match="stop_after must be >= 1"):
        mmjax.train(tiny_config(avdigits_root), tmp_path, stop_after=0, progress=False)
    cfg = tiny_config(avdigits_root)
    set_value(cfg, "train.eval_splits", ("tset",))
    with pytest.raises(mmjax.ConfigError, match=r"train.eval_splits: \['tset'\] are not splits"):
        mmjax.train(cfg, tmp_path, progress=False)
    assert not (tmp_path / "checkpoints").exists()


def test_unreadable_experiment_record(trained, tmp_path):
    (tmp_path / "experiment.json").write_text("{not json")
    with pytest.raises(mmjax.CheckpointError, match="unreadable or not an mmjax record"):
        mmjax.load_predictor(tmp_path)


def test_read_only_commands_create_nothing(trained, tmp_path):
    import shutil

    (tmp_path / "experiment.json").write_text((trained[0] / "experiment.json").read_text())
    with pytest.raises(mmjax.CheckpointError, match="no checkpoint yet"):
        mmjax.load_predictor(tmp_path)
    with pytest.raises(mmjax.CheckpointError, match="no checkpoint yet"):
        mmjax.evaluate_workdir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.json"]
    copy = tmp_path / "copy"
    shutil.copytree(trained[0], copy)
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*")}
    mmjax.load_predictor(copy).predict(image=np.zeros((8, 8, 1), np.float32))
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*")} == before
