"""The sharded train step: equal to the single-device step, compiled once."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax.compile_options import init_compiler_options
from mmjax.config import experiment_from
from mmjax.parallel import data_mesh, put_batch
from mmjax.registry import MODELS
from mmjax.train.state import build_model_and_optimizer, init_state, state_shardings
from mmjax.train.step import LeafTrainStep, make_train_step
from tests.batches import avdigits_batches
from tests.trees import assert_same_leaves


@pytest.fixture(scope="module")
def experiment():
    return experiment_from({"model": MODELS.get("avdigits_late")(), "train": {"steps": 10}})


def _run(experiment, mesh, steps: int):
    graphdef, state = init_state(experiment, mesh)
    step = make_train_step(graphdef, state_shardings(state, mesh), mesh)
    losses = []
    for batch in avdigits_batches(steps, 8, 8000):
        state, metrics = step(state, put_batch(batch, mesh))
        losses.append(float(metrics["loss"]))
    return nnx.to_pure_dict(state), losses


def test_sharded_step_equals_single_device(experiment):
    assert jax.device_count() == 4
    sharded, sharded_losses = _run(experiment, data_mesh(), 3)
    single, single_losses = _run(experiment, data_mesh(jax.devices()[:1]), 3)
    np.testing.assert_allclose(sharded_losses, single_losses, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_the_loops_leaf_step_equals_the_state_step_bit_for_bit(experiment):
    """`LeafTrainStep` (the training loop's) runs the same program on the state's leaves: the
    same losses and state, the leaves sharded as the state is, the State rebuilt from them."""
    mesh = data_mesh()
    graphdef, state = init_state(experiment, mesh)
    shardings = state_shardings(state, mesh)
    leaf_step = LeafTrainStep(graphdef, shardings, mesh)
    leaves = [jnp.copy(x) for x in leaf_step.leaves(state)]
    state_step = make_train_step(graphdef, shardings, mesh)
    for batch in avdigits_batches(3, 8, 8000):
        placed = put_batch(batch, mesh)
        state, metrics = state_step(state, placed)
        leaves, leaf_metrics = leaf_step(leaves, placed)
        assert float(leaf_metrics["loss"]) == float(metrics["loss"])
    rebuilt = leaf_step.state(leaves)
    assert jax.tree.structure(rebuilt) == jax.tree.structure(state)
    assert [x.sharding for x in leaves] == [x.sharding for x in jax.tree.leaves(state)]
    assert_same_leaves(nnx.to_pure_dict(rebuilt), nnx.to_pure_dict(state))


def test_init_program_equals_the_default_compile_bit_for_bit(experiment):
    """The init program's cheaper compile (`init_compiler_options`, used by `init_state`)
    builds exactly the values XLA's default level does (the test session compiles at level 1
    everywhere, tests/conftest.py, so the default is asked for by name)."""
    assert init_compiler_options() == {"xla_backend_optimization_level": 1}
    mesh = data_mesh(jax.devices()[:1])
    _, state = init_state(experiment, mesh)
    default = jax.jit(
        lambda seed: nnx.split(build_model_and_optimizer(experiment, seed))[1],
        compiler_options={"xla_backend_optimization_level": 3},
    )(experiment.train.seed)
    assert len(jax.tree.leaves(state)) > 20
    assert_same_leaves(nnx.to_pure_dict(state), nnx.to_pure_dict(default))


def test_batch_is_sharded_and_params_replicated(experiment):
    mesh = data_mesh()
    batch = put_batch(next(avdigits_batches(1, 8, 8000)), mesh)
    assert batch["image"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    assert len(batch["image"].addressable_shards) == 4
    assert batch["image"].addressable_shards[0].data.shape == (2, 8, 8, 1)
    _, state = init_state(experiment, mesh)
    leaf = jax.tree.leaves(state)[0]
    assert leaf.sharding.is_fully_replicated


def test_step_compiles_once_over_five_steps(experiment, caplog):
    mesh = data_mesh()
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING):
            _run(experiment, mesh, 5)
    finally:
        jax.config.update("jax_log_compiles", False)
    compiles = [
        r
        for r in caplog.records
        if "train_step" in r.getMessage() and "Finished XLA compilation" in r.getMessage()
    ]
    assert len(compiles) == 1, [r.getMessage() for r in compiles]
