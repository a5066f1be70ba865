"""The train step's gradient accumulation, bfloat16 compute and non-finite guard."""

import functools
import logging
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax.config import experiment_from
from mmjax.errors import ConfigError
from mmjax.parallel import data_mesh, put_batch
from mmjax.train.state import init_state, state_shardings
from mmjax.train.step import make_train_step

BATCH = 16
AUDIO_SAMPLES = 2000
AUDIO = {"name": "audio_frames", "stride": 8, "dim": 16}
IMAGE = {"name": "small_cnn", "channels": (4,), "dim": 8}


def _experiment(encoders: dict, frozen: tuple[str, ...]):
    """A tiny model; late_concat without dropout, so micro-batches draw no random numbers."""
    return experiment_from(
        {
            "model": {
                "encoders": encoders,
                "fusion": {"name": "late_concat", "hidden": 32, "dropout": 0.0},
                "num_classes": 10,
                "frozen": frozen,
            },
            "optim": {"warmup_steps": 0},
            "train": {"batch_size": BATCH, "steps": 10},
        }
    )


class Setup:
    """One experiment's initial state (copied for each run: steps donate it) and its steps."""

    def __init__(self, encoders: dict, frozen: tuple[str, ...] = ()):
        self.mesh = data_mesh()
        self.graphdef, self.initial = init_state(_experiment(encoders, frozen), self.mesh)
        self.shardings = state_shardings(self.initial, self.mesh)
        self.modalities = tuple(encoders)

    def state(self) -> nnx.State:
        return jax.tree.map(jnp.copy, self.initial)

    def step(self, **options):
        return make_train_step(self.graphdef, self.shardings, self.mesh, **options)

    @functools.cached_property
    def f32_step(self):
        """The default step, compiled once for the tests that share it."""
        return self.step()

    def batch(self, seed: int) -> dict[str, jax.Array]:
        rng = np.random.default_rng(seed)
        arrays = {
            "image": rng.random((BATCH, 8, 8, 1), np.float32),
            "audio": rng.standard_normal((BATCH, AUDIO_SAMPLES)).astype(np.float32),
            "label": rng.integers(0, 10, BATCH).astype(np.int32),
        }
        arrays = {k: v for k, v in arrays.items() if k in (*self.modalities, "label")}
        return put_batch(arrays, self.mesh)


@pytest.fixture(scope="module")
def audio_only():
    """No BatchNorm anywhere: accumulated and whole-batch gradients are the same."""
    return Setup({"audio": AUDIO})


@pytest.fixture(scope="module")
def image_audio():
    """small_cnn has BatchNorm (state written by the forward pass) and convolutions."""
    return Setup({"image": IMAGE, "audio": AUDIO})


def _leaves(state: nnx.State) -> list[np.ndarray]:
    def host(x: jax.Array) -> np.ndarray:
        return np.asarray(
            jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        )

    return [host(x) for x in jax.tree.leaves(state)]


def _params(setup: Setup, state: nnx.State) -> np.ndarray:
    """Every trainable parameter, flattened into one float64 vector."""
    model = nnx.merge(setup.graphdef, state)[0]
    leaves = jax.tree.leaves(nnx.state(model, model.trainable()))
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in leaves])


def _train(step, state: nnx.State, setup: Setup, seeds) -> tuple[nnx.State, list[dict]]:
    metrics = []
    for seed in seeds:
        state, m = step(state, setup.batch(seed))
        metrics.append({k: float(v) for k, v in m.items()})
    return state, metrics


def test_accumulated_micro_batches_equal_the_whole_batch(audio_only, caplog):
    """Four micro-batches of 4 give the whole batch's update, step after step, compiled once;
    each micro-batch stays spread over the 4 devices (no all-to-all moves batch rows)."""
    whole, whole_metrics = _train(audio_only.step(), audio_only.state(), audio_only, range(3))
    accumulated_step = audio_only.step(grad_accum_steps=4)
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING):
            accumulated, metrics = _train(
                accumulated_step, audio_only.state(), audio_only, range(3)
            )
    finally:
        jax.config.update("jax_log_compiles", False)
    compiles = [
        r.getMessage()
        for r in caplog.records
        if "train_step" in r.getMessage() and "Finished XLA compilation" in r.getMessage()
    ]
    assert len(compiles) == 1, compiles
    for key in ("loss", "accuracy", "grad_norm"):
        np.testing.assert_allclose(
            [m[key] for m in metrics], [m[key] for m in whole_metrics], rtol=1e-5, err_msg=key
        )
    assert all(m["nonfinite"] == 0.0 for m in metrics)
    for a, b in zip(_leaves(accumulated), _leaves(whole), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(_params(audio_only, whole), _params(audio_only, audio_only.initial))
    hlo = accumulated_step.lower(audio_only.state(), audio_only.batch(0)).compile().as_text()
    assert not re.search(r"all-to-all|collective-permute", hlo)


def test_micro_batches_update_batch_statistics_in_turn(image_audio):
    """BatchNorm statistics after one step of 4 micro-batches equal 4 forward passes in a row
    over rows i, 4 + i, 8 + i, 12 + i (i = 0..3)."""
    batch = image_audio.batch(0)
    state, metrics = image_audio.step(grad_accum_steps=4)(image_audio.state(), batch)
    assert metrics["nonfinite"] == 0.0
    encoder = nnx.merge(image_audio.graphdef, image_audio.state())[0].encoders["image"]
    images = np.asarray(batch["image"])
    for i in range(4):
        encoder(images[i::4], train=True)
    stepped = nnx.merge(image_audio.graphdef, state)[0].encoders["image"]
    initial = nnx.merge(image_audio.graphdef, image_audio.initial)[0].encoders["image"]
    leaves = [jax.tree.leaves(nnx.state(m, nnx.BatchStat)) for m in (stepped, encoder, initial)]
    for got, want, old in zip(*leaves, strict=True):
        assert not np.allclose(want, old)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_float32_state_and_follows_float32(image_audio):
    """bf16 convolutions and matmuls on a cast of the float32 parameters: the state keeps
    every dtype, and loss and update stay close to the float32 step's."""
    bf16_step = image_audio.step(compute_dtype="bfloat16")
    batch = image_audio.batch(0)
    with warnings.catch_warnings():  # e.g. a float32 write into a bfloat16 variable
        warnings.simplefilter("error", FutureWarning)
        lowered = bf16_step.lower(image_audio.state(), batch).as_text()
    ops = re.findall(r"stablehlo\.(?:convolution|dot_general).*", lowered)
    assert any("convolution" in op for op in ops) and any("dot_general" in op for op in ops)
    in_float32 = [op for op in ops if not re.search(r"-> tensor<[0-9x]*bf16>$", op)]
    # only the log-mel's DFT (a matmul with several devices: logmel.power_spectrum) and
    # filterbank products, deliberately float32 at precision HIGHEST
    assert len(in_float32) == 2 and all("HIGHEST" in op for op in in_float32), in_float32

    initial = _params(image_audio, image_audio.initial)
    f32_state, f32_metrics = image_audio.f32_step(image_audio.state(), batch)
    bf16_state, bf16_metrics = bf16_step(image_audio.state(), batch)
    f32_loss, bf16_loss = float(f32_metrics["loss"]), float(bf16_metrics["loss"])
    assert np.isfinite(bf16_loss) and bf16_metrics["nonfinite"] == 0.0
    np.testing.assert_allclose(bf16_loss, f32_loss, rtol=1e-2)  # measured: 1e-4
    f32_update = _params(image_audio, f32_state) - initial
    bf16_update = _params(image_audio, bf16_state) - initial
    cosine = f32_update @ bf16_update / np.linalg.norm(f32_update) / np.linalg.norm(bf16_update)
    assert cosine > 0.98, cosine  # measured: 0.995

    bf16_state, _ = bf16_step(bf16_state, image_audio.batch(1))
    dtypes = [x.dtype for x in jax.tree.leaves(bf16_state)]
    assert dtypes == [x.dtype for x in jax.tree.leaves(image_audio.initial)]
    stats = jax.tree.leaves(
        nnx.state(nnx.merge(image_audio.graphdef, bf16_state)[0], nnx.BatchStat)
    )
    rounded = [np.asarray(x.astype(jnp.bfloat16).astype(jnp.float32)) for x in stats]
    assert any(not np.array_equal(x, r) for x, r in zip(stats, rounded)), "stats kept in bf16"


def test_bfloat16_compute_leaves_frozen_weights_exact():
    """A frozen encoder runs in bfloat16 too, but its float32 weights and statistics are
    never replaced by their bfloat16 round trip."""
    setup = Setup({"image": IMAGE, "audio": AUDIO}, frozen=("image",))
    state, metrics = setup.step(compute_dtype="bfloat16")(setup.state(), setup.batch(0))
    assert metrics["nonfinite"] == 0.0
    encoders = [nnx.merge(setup.graphdef, s)[0].encoders for s in (state, setup.initial)]
    after, before = (_leaves(nnx.state(e["image"])) for e in encoders)
    for a, b in zip(after, before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(*(_leaves(nnx.state(e["audio"])) for e in encoders))
    )


def test_a_nonfinite_step_leaves_the_state_unchanged(image_audio):
    """A NaN pixel (validate_batch bypassed) makes the loss NaN: the step returns its input
    state bit for bit and says so; the next good batch trains as usual."""
    step, state = image_audio.f32_step, image_audio.state()
    before = _leaves(state)
    bad = dict(image_audio.batch(0))
    bad["image"] = bad["image"].at[3, 2, 2, 0].set(jnp.nan)
    state, metrics = step(state, bad)
    assert float(metrics["nonfinite"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
    for a, b in zip(_leaves(state), before, strict=True):
        np.testing.assert_array_equal(a, b)
    state, metrics = step(state, image_audio.batch(1))
    assert float(metrics["nonfinite"]) == 0.0 and np.isfinite(float(metrics["loss"]))
    assert not np.array_equal(
        _params(image_audio, state), _params(image_audio, image_audio.initial)
    )


def test_invalid_options_name_their_config_key(audio_only):
    with pytest.raises(ConfigError, match=r"train\.compute_dtype"):
        audio_only.step(compute_dtype="float16")
    with pytest.raises(ConfigError, match=r"train\.grad_accum_steps"):
        audio_only.step(grad_accum_steps=0)
    for k in (3, 8):  # 16 rows: not into 3 equal parts; 8 micro-batches of 2 over 4 devices
        with pytest.raises(ConfigError, match=r"train\.grad_accum_steps"):
            audio_only.step(grad_accum_steps=k)(audio_only.state(), audio_only.batch(0))
