"""Every fusion head inside a whole model: each parameter learns; the train step compiles once."""

import logging

import jax
import numpy as np
import pytest
from flax import nnx

from mmjax.config import experiment_from
from mmjax.experiments import avdigits_config
from mmjax.parallel import data_mesh, put_batch
from mmjax.registry import FUSIONS
from mmjax.train.state import abstract_state, build_model_and_optimizer, state_shardings
from mmjax.train.step import make_train_step

BATCH = 8
AUDIO_SAMPLES = 2000


def _experiment(fusion: str):
    config = avdigits_config("avdigits_late", "tiny").to_dict()
    config["model"].update(
        encoders={
            "image": {"name": "small_cnn", "channels": (8,), "dim": 16},
            "audio": {"name": "audio_frames", "stride": 8, "dim": 24},
        },
        fusion={"name": fusion},
        adversarial_weight=0.1,  # the modality discriminator must learn too
    )
    config["train"]["batch_size"] = BATCH
    config["optim"].update(warmup_steps=0, weight_decay=0.0)
    return experiment_from(config)


def _batch(seed: int, image_mask: list[bool], audio_mask: list[bool]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.random((BATCH, 8, 8, 1), np.float32),
        "audio": rng.standard_normal((BATCH, AUDIO_SAMPLES)).astype(np.float32),
        "image_mask": np.array(image_mask),
        "audio_mask": np.array(audio_mask),
        "label": rng.integers(0, 10, BATCH).astype(np.int32),
    }


def _init_state(exp, mesh):
    """What `init_state(exp, mesh)` returns (its graphdef and shardings, its values up to float
    rounding), with the model and optimizer built eagerly, then placed: init_state's jitted
    program took 2-5 s to compile per fusion, while the eager initialisers' small programs
    recur from one fusion to the next. abstract_state traces the build, as init_state's does."""
    graphdef, abstract = abstract_state(exp)
    state = nnx.split(build_model_and_optimizer(exp))[1]
    return graphdef, jax.device_put(state, state_shardings(abstract, mesh, exp.parallel))


# Sample 0 lacks audio and sample 1 lacks the image, so parameters that stand in for a
# missing modality (null tokens) are exercised too.
PARTIAL = dict(image_mask=[True, False] + [True] * 6, audio_mask=[False, True] + [True] * 6)


@pytest.mark.parametrize("name", FUSIONS.names())
def test_every_parameter_learns_and_the_step_compiles_once(name, caplog):
    """One AdamW step without weight decay or warm-up moves a parameter exactly when its
    gradient is non-zero (and keeps it finite when the gradient is); later steps with new
    data and new missing-modality patterns reuse the one compiled step."""
    exp = _experiment(name)
    mesh = data_mesh()
    graphdef, state = _init_state(exp, mesh)
    step = make_train_step(graphdef, state_shardings(state, mesh), mesh)
    before = nnx.to_flat_state(jax.device_get(nnx.state(nnx.merge(graphdef, state)[0], nnx.Param)))
    patterns = [PARTIAL, dict(image_mask=[True] * BATCH, audio_mask=[True] * BATCH), PARTIAL]
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING):
            for seed, masks in enumerate(patterns):
                state, metrics = step(state, put_batch(_batch(seed, **masks), mesh))
                assert np.isfinite(float(metrics["loss"])), (seed, metrics)
                if seed == 0:
                    model = nnx.merge(graphdef, state)[0]
                    after = dict(nnx.to_flat_state(jax.device_get(nnx.state(model, nnx.Param))))
    finally:
        jax.config.update("jax_log_compiles", False)
    stuck = [
        "/".join(map(str, path))
        for path, old in before
        if not np.isfinite(after[path]).all() or np.array_equal(after[path], old)
    ]
    assert not stuck, f"parameters that did not learn (zero or non-finite gradient): {stuck}"
    compiles = [
        r.getMessage()
        for r in caplog.records
        if "train_step" in r.getMessage() and "Finished XLA compilation" in r.getMessage()
    ]
    assert len(compiles) == 1, compiles
