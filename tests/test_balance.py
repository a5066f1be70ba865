"""OGM-GE modality balancing: the coefficients follow the paper's formula, only the encoders'
gradients are modulated, inside the one jitted step, and a balanced run resumes exactly."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import mmjax
from mmjax.config import experiment_from, set_value
from mmjax.parallel import data_mesh
from mmjax.train.balance import OGMGE, modulate, ogm_coefficients
from mmjax.train.state import build_model_and_optimizer, state_shardings
from mmjax.train.step import make_train_step
from tests.batches import avdigits_batches
from tests.test_train_loop import _params, tiny_config
from tests.trees import assert_same_leaves


def reference_coefficients(logits: dict, labels, present: dict, alpha: float) -> dict:
    """Peng et al. 2022 (the discrepancy ratio and Eq. 10's coefficient), in NumPy: s_u = mean
    over present samples of softmax(o_u) at the true class; rho_u = s_u / s_v (two
    modalities) or over the others' mean; k_u = 1 - tanh(alpha rho_u) if rho_u > 1 else 1."""
    scores = {}
    for m, o in logits.items():
        o = np.asarray(o, np.float64)
        p = np.exp(o - o.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        scores[m] = np.mean([p[i, labels[i]] for i in range(len(labels)) if present[m][i]])
    out = {}
    for m, s in scores.items():
        rho = s / np.mean([v for u, v in scores.items() if u != m])
        out[m] = 1 - np.tanh(alpha * rho) if rho > 1 else 1.0
    return out


@pytest.mark.parametrize("modalities", [("audio", "image"), ("audio", "image", "text")])
def test_coefficients_follow_the_paper(modalities):
    rng = np.random.default_rng(len(modalities))
    labels = rng.integers(0, 5, 8)
    # The image is confident and right, the others are not: the image dominates.
    logits = {m: rng.standard_normal((8, 5)) for m in modalities}
    logits["image"][np.arange(8), labels] += 4.0
    present = {m: np.ones(8, bool) for m in modalities}
    present["audio"][[1, 5]] = False
    got = ogm_coefficients(
        {m: jnp.asarray(v, jnp.float32) for m, v in logits.items()},
        jnp.asarray(labels),
        {m: jnp.asarray(v) for m, v in present.items()},
        alpha=0.7,
    )
    expected = reference_coefficients(logits, labels, present, 0.7)
    for m in modalities:
        np.testing.assert_allclose(float(got[m]), expected[m], rtol=1e-5)
    assert float(got["image"]) < 1 and all(float(got[m]) == 1 for m in modalities if m != "image")


def test_modulate_scales_and_adds_noise_to_encoders_only():
    grads = nnx.State(
        {
            "encoders": {"audio": {"w": jnp.ones((64, 64))}, "image": {"w": jnp.ones((64, 64))}},
            "head": {"w": jnp.ones((64, 64))},
        }
    )
    grads = jax.tree.map(lambda g: g * jnp.linspace(0, 2, g.size).reshape(g.shape), grads)
    key = jax.random.key(0)
    out = modulate(grads, {"audio": jnp.float32(0.25), "image": jnp.float32(1.0)}, key)
    np.testing.assert_array_equal(out["head"]["w"], grads["head"]["w"])
    for m, k in (("audio", 0.25), ("image", 1.0)):
        g, noise = (
            grads["encoders"][m]["w"],
            out["encoders"][m]["w"] - k * grads["encoders"][m]["w"],
        )
        # The noise: zero-mean, with the std of the unmodulated gradient.
        assert abs(float(noise.mean())) < 0.05 and float(noise.std()) == pytest.approx(
            float(g.std()), rel=0.05
        )
    again = modulate(grads, {"audio": jnp.float32(0.25), "image": jnp.float32(1.0)}, key)
    assert jax.tree.all(jax.tree.map(jnp.array_equal, out, again))


def cheap_config(avdigits_root, steps: int = 6):
    """The tiny late-fusion config with log-mel frames for audio (it compiles in a fraction
    of the CNN-LSTM's time), one eval split."""
    cfg = tiny_config(avdigits_root, steps=steps)
    set_value(cfg, "model.encoders.audio", "audio_frames")
    set_value(cfg, "model.encoders.audio.dim", 16)
    set_value(cfg, "train.eval_splits", ("test",))
    return cfg


def test_the_step_modulates_only_inside_its_window(avdigits_root):
    exp = experiment_from(cheap_config(avdigits_root))
    mesh = data_mesh(jax.devices()[:1])
    graphdef, state = nnx.split(build_model_and_optimizer(exp))
    shardings = state_shardings(state, mesh)
    plain = make_train_step(graphdef, shardings, mesh)
    balanced = make_train_step(graphdef, shardings, mesh, ogm=OGMGE(0.5, until=1, seed=0))
    batch = next(avdigits_batches(1, exp.train.batch_size, audio=8000))

    def params_after(step, state):
        state, metrics = step(jax.tree.map(jnp.copy, state), batch)
        return nnx.state(nnx.merge(graphdef, state)[0], nnx.Param), metrics

    (a, _), (b, metrics) = params_after(plain, state), params_after(balanced, state)
    assert {"balance_coeff_audio", "balance_coeff_image"} <= set(metrics)
    changed = jax.tree.map(lambda x, y: not jnp.array_equal(x, y), a, b)
    assert changed["encoders"]["audio"] and changed["encoders"]["image"]
    assert not any(jax.tree.leaves(changed["head"]))  # only the encoders' gradients change
    # At optimizer step 1 (>= until) the balanced step is the plain one.
    model, optimizer = nnx.merge(graphdef, state)
    optimizer.step[...] = jnp.ones_like(optimizer.step[...])
    later = nnx.state((model, optimizer))
    (a, _), (b, _) = params_after(plain, later), params_after(balanced, later)
    assert jax.tree.all(jax.tree.map(jnp.array_equal, a, b))


@pytest.mark.parametrize("method", ["ogm_ge", "grad_blend"])
def test_balanced_run_resumes_exactly(avdigits_root, tmp_path, method):
    cfg = cheap_config(avdigits_root)
    set_value(cfg, "train.balance", method)
    set_value(cfg, "train.checkpoint_every", 3)
    if method == "grad_blend":  # weights updated at steps 2, 4, 6: across the resume at 3
        set_value(cfg, "model.unimodal_weight", 1.0)
        set_value(cfg, "train.balance_every", 2)
        set_value(cfg, "train.log_every", 2)
    straight = mmjax.train(cfg, tmp_path / "straight", progress=False)
    mmjax.train(cfg, tmp_path / "resumed", stop_after=3, progress=False)
    resumed = mmjax.train(cfg, tmp_path / "resumed", progress=False)
    assert (resumed["started_at_step"], resumed["steps_this_call"]) == (3, resumed["steps"] - 3)
    assert resumed["accuracy"] == straight["accuracy"]
    a, b = _params(tmp_path / "straight")[1], _params(tmp_path / "resumed")[1]
    assert_same_leaves(a, b)
    if method == "grad_blend":
        rows = [json.loads(r) for r in (tmp_path / "straight" / "metrics.jsonl").open()]
        rows = [r for r in rows if "loss_weight_fused" in r]  # not the checkpoint's flush at 3
        assert [r["step"] for r in rows] == [2, 4, 6]
        weights = [[r[f"loss_weight_{k}"] for k in ("fused", "audio", "image")] for r in rows]
        assert weights[0] == [1.0, 1.0, 1.0]  # the first update only measures
        assert all(sum(w) == pytest.approx(1.0) for w in weights[1:])


def test_balancing_refuses_what_it_cannot_balance(avdigits_root, tmp_path):
    image_only = tiny_config(avdigits_root, model="image", steps=1)
    set_value(image_only, "train.balance", "ogm_ge")
    with pytest.raises(mmjax.ConfigError, match="only image"):
        mmjax.train(image_only, tmp_path / "image", progress=False)
    set_value(image_only, "train.balance", "ogm")
    with pytest.raises(mmjax.ConfigError, match=r"train\.balance' must be one of none, ogm_ge"):
        mmjax.train(image_only, tmp_path / "image2", progress=False)
    late = cheap_config(avdigits_root, steps=1)
    set_value(late, "train.balance", "grad_blend")
    with pytest.raises(mmjax.ConfigError, match=r"model\.unimodal_weight > 0"):
        mmjax.train(late, tmp_path / "late", progress=False)


def reference_blend_weights(before, after, current):
    """Wang et al. 2020 (Gradient-Blending's weights): G = L^V(N) - L^V(N+n),
    O = gap(N+n) - gap(N) with gap = L^V - L^T; w = (G / O^2) / Z. Restated per head, with
    the documented guards."""
    raw = []
    for k in range(before.shape[1]):
        g = before[1, k] - after[1, k]
        o = (after[1, k] - after[0, k]) - (before[1, k] - before[0, k])
        raw.append(max(g, 0.0) / max(o, 1e-4) ** 2)
    total = sum(raw)
    return list(current) if total <= 0 else [r / total for r in raw]


def test_gradient_blend_weights_follow_the_paper():
    from mmjax.train.balance import gradient_blend_weights

    # Rows: train loss, val loss; columns: fused, audio, image.
    before = np.array([[2.0, 2.2, 1.9], [2.1, 2.3, 2.0]])
    after = np.array([[1.2, 2.0, 0.9], [1.5, 2.2, 1.6]])  # image overfits most; audio learns little
    current = np.array([1.0, 1.0, 1.0])
    got = gradient_blend_weights(before, after, current)
    np.testing.assert_allclose(got, reference_blend_weights(before, after, current), rtol=1e-12)
    assert got.sum() == pytest.approx(1.0) and np.argmax(got) != 2
    worse = after.copy()
    worse[1] = before[1] + 0.1  # no head's val loss fell: the weights stay
    np.testing.assert_array_equal(gradient_blend_weights(before, worse, current), current)


def test_unimodal_heads_add_their_weighted_losses(avdigits_root):
    from mmjax.train.step import training_loss

    cfg = cheap_config(avdigits_root)
    set_value(cfg, "model.unimodal_weight", 0.5)
    exp = experiment_from(cfg)
    model, _ = build_model_and_optimizer(exp)
    model.loss_weights[...] = jnp.asarray([0.2, 0.5, 0.3])
    batch = next(avdigits_batches(1, 8, audio=8000))
    total, (_, terms) = training_loss(model, batch)
    expected = (
        0.2 * terms["cross_entropy"]
        + 0.5 * terms["unimodal_ce_audio"]
        + 0.3 * terms["unimodal_ce_image"]
    )
    assert float(total) == pytest.approx(float(expected), rel=1e-6)
    # The image is missing in some rows: its head's loss is the mean over the others only.
    features, _ = model.encode({k: v for k, v in batch.items() if k != "label"}, train=True)
    logits = model.unimodal_heads["image"](features["image"].pooled)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    present = batch["image_mask"]
    assert not present.all()
    np.testing.assert_allclose(
        float(terms["unimodal_ce_image"]), float(ce[present].mean()), rtol=1e-5
    )


def test_utilisation_is_logged_from_a_val_batch(avdigits_root, tmp_path):
    from mmjax.data import pipeline

    cfg = cheap_config(avdigits_root, steps=4)
    set_value(cfg, "train.log_every", 2)
    set_value(cfg, "train.utilisation_every", 2)
    mmjax.train(cfg, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    # Recompute the last row's numbers with the trained model on the first val batch.
    predictor = mmjax.load_predictor(tmp_path)
    exp = predictor.experiment
    batch, rows_in_batch = next(
        pipeline.eval_batches(exp.data, predictor.modalities, "val", exp.train.eval_batch_size)
    )
    labels = batch.pop("label")[:rows_in_batch]

    def accuracy(b):
        return float(np.mean(predictor.batch_proba(b)[:rows_in_batch].argmax(1) == labels))

    full = accuracy(batch)
    assert rows[-1]["val_batch_accuracy"] == pytest.approx(full, abs=1e-6)
    for m in ("audio", "image"):
        without = accuracy({**batch, f"{m}_mask": np.zeros_like(batch[f"{m}_mask"])})
        assert rows[-1][f"utilisation_{m}"] == pytest.approx(full - without, abs=1e-6)
