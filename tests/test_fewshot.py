"""Few-shot linear probes: the closed form equals scikit-learn's ridge; probes on a published
model's representations; bad shot counts are refused."""

import numpy as np
import pytest
from sklearn.linear_model import Ridge

import mmjax
from mmjax import fewshot


@pytest.mark.parametrize(("n", "d"), [(40, 6), (8, 30)])  # both branches: N >= D and N < D
def test_probe_equals_scikit_learn_ridge(n, d):
    rng = np.random.default_rng(0)
    x, labels = rng.standard_normal((n, d)) * 3 + 1, rng.integers(0, 4, n)
    probe = fewshot.fit_probe(x, labels, 4, l2=7.0)
    # The same problem for scikit-learn: standardised features, the bias feature, {-1, 1}
    # one-hot targets, no intercept of its own.
    z = (x - x.mean(0)) / (x.std(0) + 1e-5)
    z = np.concatenate([z, np.full((n, 1), fewshot.BIAS_FEATURE)], axis=1)
    targets = 2.0 * np.eye(4)[labels] - 1.0
    ridge = Ridge(alpha=7.0, fit_intercept=False, solver="cholesky").fit(z, targets)
    np.testing.assert_allclose(probe["weights"], ridge.coef_.T, rtol=1e-6, atol=1e-9)
    x_new = rng.standard_normal((5, d))
    z_new = np.concatenate([(x_new - x.mean(0)) / (x.std(0) + 1e-5), np.full((5, 1), 100.0)], 1)
    np.testing.assert_array_equal(
        fewshot.probe_predict(probe, x_new), ridge.predict(z_new).argmax(1)
    )


@pytest.fixture(scope="module")
def late():
    return mmjax.load_pretrained("avdigits-late")


def test_probes_on_a_published_model(late, avdigits_root):
    root = str(avdigits_root)
    result = fewshot.evaluate(late, [2, 1], draws=2, data_root=root)
    assert result["shots"] == [1, 2] and list(result["representations"]) == [
        "fused", "audio", "image",
    ]  # fmt: skip
    fused = result["representations"]["fused"]
    assert fused["dim"] == 128 and len(fused["accuracy"]["2"]["draws"]) == 2
    # Ten classes: chance is 0.1; the trained fused vector separates digits from 2 examples.
    assert fused["accuracy"]["2"]["mean"] > 0.4
    assert fewshot.evaluate(late, [1, 2], draws=2, data_root=root) == result


def test_bad_shots_are_refused(late, avdigits_root, tmp_path):
    with pytest.raises(mmjax.ConfigError, match=r"--shots 100000: class '\d' has only \d+"):
        fewshot.evaluate(late, [1, 100000], draws=1, data_root=str(avdigits_root))
    with pytest.raises(mmjax.ConfigError, match="--shots"):
        fewshot.check_shots([0], 1)
    with pytest.raises(mmjax.ConfigError, match="--draws"):
        fewshot.check_shots([1], 0)
    from mmjax.config import experiment_from, set_value
    from tests.test_train_loop import tiny_config

    cfg = tiny_config(avdigits_root)
    set_value(cfg, "train.fewshot_shots", (0, 1))
    with pytest.raises(mmjax.ConfigError, match=r"train\.fewshot_shots"):
        experiment_from(cfg)
    set_value(cfg, "train.fewshot_shots", (1000,))
    set_value(cfg, "train.fewshot_every", 1)
    with pytest.raises(mmjax.ConfigError, match=r"train\.fewshot_shots 1000: the support pool"):
        mmjax.train(cfg, tmp_path, progress=False)


def test_probes_logged_while_training(avdigits_root, tmp_path):
    """train.fewshot_every: the logged accuracies are the documented probes, recomputed here
    from the saved model through the Predictor: supports from the first 4 eval batches of
    train (draw 0), queries the first 4 of val."""
    import json

    from mmjax.config import set_value
    from mmjax.data import pipeline
    from tests.test_train_loop import tiny_config

    cfg = tiny_config(avdigits_root, steps=4)
    set_value(cfg, "model.encoders.audio", "audio_frames")  # compiles fast
    set_value(cfg, "train.eval_splits", ("test",))
    set_value(cfg, "train.log_every", 2)
    set_value(cfg, "train.fewshot_every", 2)
    set_value(cfg, "train.fewshot_shots", (1, 2))
    mmjax.train(cfg, tmp_path, progress=False)
    last = [json.loads(r) for r in (tmp_path / "metrics.jsonl").open()][-1]
    predictor = mmjax.load_predictor(tmp_path)
    exp = predictor.experiment

    def pool(split):
        xs, ys = [], []
        for i, (batch, rows) in enumerate(
            pipeline.eval_batches(exp.data, predictor.modalities, split, exp.train.eval_batch_size)
        ):
            if i == fewshot.PROBE_BATCHES:
                break
            ys.append(batch.pop("label")[:rows])
            vectors, _ = fewshot._represent(predictor.graphdef, predictor.params, batch)
            xs.append(np.asarray(vectors["fused"])[:rows])
        return np.concatenate(xs), np.concatenate(ys)

    (x, y), (xq, yq) = pool("train"), pool("val")
    rng = np.random.default_rng(0)
    order = [rng.permutation(np.flatnonzero(y == c)) for c in range(exp.model.num_classes)]
    for k in (1, 2):
        support = np.concatenate([o[:k] for o in order])
        probe = fewshot.fit_probe(x[support], y[support], exp.model.num_classes, fewshot.L2_REG)
        expected = float(np.mean(fewshot.probe_predict(probe, xq) == yq))
        assert last[f"fewshot_{k}shot"] == pytest.approx(expected, abs=1.5 / len(yq))
