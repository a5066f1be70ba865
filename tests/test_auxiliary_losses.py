"""Auxiliary objectives: adversarial modality alignment and two-tower contrastive heads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax.config import experiment_from, model_config_from
from mmjax.models import build_model
from mmjax.models.alignment import ModalityDiscriminator, reverse_gradient
from mmjax.models.fusion_contrastive import zero_shot_logits
from mmjax.models.layers import Features
from mmjax.parallel import data_mesh, put_batch
from mmjax.registry import FUSIONS, MODELS
from mmjax.train.state import init_state, state_shardings
from mmjax.train.step import make_train_step


def test_reverse_gradient_flips_the_sign():
    x = jnp.arange(3.0)
    assert jnp.array_equal(reverse_gradient(x, 0.5), x)
    np.testing.assert_allclose(jax.grad(lambda x: (2 * reverse_gradient(x, 0.5)).sum())(x), -1.0)


def _features(b: int = 4) -> dict[str, Features]:
    rng = np.random.default_rng(0)
    out = {}
    for m, d in (("audio", 6), ("image", 5)):
        pooled = jnp.asarray(rng.standard_normal((b, d), np.float32))
        out[m] = Features(pooled[:, None], jnp.ones((b, 1), bool), pooled)
    return out


def test_discriminator_ignores_missing_modalities():
    disc = ModalityDiscriminator({"audio": 6, "image": 5}, weight=1.0, rngs=nnx.Rngs(0))
    features = _features()
    masks = {"audio": jnp.array([True, True, False, False]), "image": jnp.ones(4, bool)}
    changed = dict(features)
    noise = jnp.ones_like(features["audio"].pooled) * 100
    changed["audio"] = Features(features["audio"].tokens, features["audio"].token_mask,
                                features["audio"].pooled.at[2:].add(noise[2:]))  # fmt: skip
    np.testing.assert_allclose(disc(features, masks), disc(changed, masks), rtol=1e-6)
    assert np.isfinite(disc(features, {m: jnp.zeros(4, bool) for m in masks}))


def test_encoder_gradient_is_reversed_against_the_discriminator():
    """The projection (generator side) descends on -loss while the classifier descends on loss."""
    disc = ModalityDiscriminator({"audio": 6, "image": 5}, weight=1.0, rngs=nnx.Rngs(0))
    features = _features()
    masks = {m: jnp.ones(4, bool) for m in features}

    def loss_of_inputs(pooled_audio):
        f = dict(features, audio=Features(features["audio"].tokens, features["audio"].token_mask,
                                          pooled_audio))  # fmt: skip
        return disc(f, masks)

    reversed_grad = jax.grad(loss_of_inputs)(features["audio"].pooled)

    def plain_loss(pooled_audio):
        shared = disc.proj["audio"](pooled_audio)
        logits = disc.classify(shared, train=True)
        return -jax.nn.log_softmax(logits)[:, 0].sum() / 8  # 8 present (sample, modality) pairs

    np.testing.assert_allclose(
        reversed_grad, -jax.grad(plain_loss)(features["audio"].pooled), rtol=1e-4, atol=1e-7
    )


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_contrastive_loss_prefers_matched_pairs(name):
    cls = FUSIONS.get(name)
    head = cls({"audio": 4, "image": 4}, cls.Config(dim=4), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((6, 4), np.float32))
    matched = {m: Features(x[:, None], jnp.ones((6, 1), bool), x) for m in ("audio", "image")}
    shuffled = dict(matched, image=Features(x[::-1, None], jnp.ones((6, 1), bool), x[::-1]))
    masks = {m: jnp.ones(6, bool) for m in ("audio", "image")}
    # Identity projections make matched pairs identical embeddings.
    for m in ("audio", "image"):
        head.proj[m].kernel[...] = jnp.eye(4)
        head.proj[m].bias[...] = jnp.zeros(4)
    good = head.aux_loss(matched, masks)["contrastive"]
    bad = head.aux_loss(shuffled, masks)["contrastive"]
    assert np.isfinite(good) and good < bad
    half = {"audio": jnp.array([True] * 3 + [False] * 3), "image": jnp.ones(6, bool)}
    assert np.isfinite(head.aux_loss(matched, half)["contrastive"])


def test_zero_shot_matches_identical_prototypes():
    section = MODELS.get("avdigits_late")()
    section["fusion"] = {"name": "clip", "dim": 16, "weight": 1.0}
    model = build_model(model_config_from(section), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.random((10, 8, 8, 1), np.float32))
    logits = zero_shot_logits(model, {"image": images}, {"image": images}, jnp.arange(10), 10)
    assert logits.shape == (10, 10)
    assert (np.argmax(np.asarray(logits), -1) == np.arange(10)).all()


@pytest.mark.parametrize(
    ("model", "fusion", "adversarial", "terms"),
    [
        ("avdigits_late", "clip", 0.0, {"contrastive"}),
        ("avdigits_late", "late_concat", 0.1, {"adversarial"}),
        ("avdigits_audio_autoencoder", "late_concat", 0.0, {"reconstruction"}),
    ],
)
def test_train_step_adds_auxiliary_terms(model, fusion, adversarial, terms):
    section = MODELS.get(model)()
    section["fusion"] = {"name": fusion}
    section["adversarial_weight"] = adversarial
    exp = experiment_from({"model": section, "train": {"steps": 3}})
    mesh = data_mesh()
    graphdef, state = init_state(exp, mesh)
    step = make_train_step(graphdef, state_shardings(state, mesh), mesh)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.random((8, 8, 8, 1), np.float32),
        "audio": rng.standard_normal((8, 8000)).astype(np.float32),
        "label": rng.integers(0, 10, 8).astype(np.int32),
    }
    batch = {k: v for k, v in batch.items() if k == "label" or k in section["encoders"]}
    _, metrics = step(state, put_batch(batch, mesh))
    metrics = jax.device_get(metrics)
    assert terms <= set(metrics)
    weight = section["classification_weight"]
    total = weight * metrics["cross_entropy"] + sum(metrics[t] for t in terms)
    np.testing.assert_allclose(metrics["loss"], total, rtol=1e-5)
