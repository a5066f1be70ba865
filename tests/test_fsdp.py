"""FSDP: the parameter-sharding rule, the `data x fsdp` mesh, and a sharded run that equals the
replicated one step for step and checkpoints into any layout."""

import re

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from mmjax.config import experiment_from
from mmjax.errors import ConfigError
from mmjax.experiments import avdigits_config
from mmjax.parallel import FSDP_AXIS, data_mesh, fsdp_spec, put_batch
from mmjax.train.checkpoint import Checkpointer
from mmjax.train.state import abstract_state, init_state, state_shardings
from mmjax.train.step import LeafTrainStep, make_train_step
from tests.batches import avdigits_batches

BATCH = 8
STEPS = 3
COLLECTIVE = re.compile(r"\b(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)")
LOG_MEL_OP = re.compile(r'op_name="[^"]*[(/]log_mel[)/]')  # mel_spectrogram's named scope


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((), PartitionSpec()),  # a scalar (step count, RNG key)
        ((63,), PartitionSpec()),  # under the threshold
        ((64,), PartitionSpec(FSDP_AXIS)),  # at the threshold
        ((40, 24), PartitionSpec(FSDP_AXIS)),  # the larger axis
        ((24, 40), PartitionSpec(None, FSDP_AXIS)),
        ((128, 128), PartitionSpec(None, FSDP_AXIS)),  # a tie: the last axis
        ((3, 3, 1, 8), PartitionSpec(None, None, None, FSDP_AXIS)),
        ((42, 13), PartitionSpec(FSDP_AXIS)),  # only the divisible axis
        ((9, 13), PartitionSpec()),  # no axis divisible
    ],
)
def test_rule_on_shapes(shape, expected):
    assert fsdp_spec(shape, 2, 64) == expected


def test_rule_skips_indivisible_larger_axis_and_size_one_fsdp():
    assert fsdp_spec((6, 4), 4, 1) == PartitionSpec(None, FSDP_AXIS)
    assert fsdp_spec((1024, 1024), 1, 1) == PartitionSpec()


def test_mesh_shapes_and_wrong_fsdp():
    assert dict(data_mesh().shape) == {"data": 4, "fsdp": 1}
    assert dict(data_mesh(fsdp=2).shape) == {"data": 2, "fsdp": 2}
    assert dict(data_mesh(jax.devices()[:1]).shape) == {"data": 1, "fsdp": 1}
    with pytest.raises(ConfigError, match=r"parallel\.fsdp \(3\).*\(4\)"):
        data_mesh(fsdp=3)


@pytest.fixture(scope="module")
def experiment():
    config = avdigits_config("avdigits_late", "tiny").to_dict()
    config["model"]["encoders"] = {
        "image": {"name": "small_cnn", "channels": (8,), "dim": 16},
        "audio": {"name": "audio_frames", "stride": 8, "dim": 24},
    }
    config["train"]["batch_size"] = BATCH
    config["optim"].update(warmup_steps=0)  # the first step already moves every parameter
    config["parallel"] = {"fsdp": 2, "fsdp_min_size": 64}
    return experiment_from(config)


def _train(exp, mesh) -> tuple[nnx.State, list[float]]:
    graphdef, state = init_state(exp, mesh)
    step = make_train_step(graphdef, state_shardings(state, mesh, exp.parallel), mesh)
    losses = []
    for batch in avdigits_batches(STEPS, BATCH, 2000):
        state, metrics = step(state, put_batch(batch, mesh))
        losses.append(float(metrics["loss"]))  # blocks: unsynchronised CPU collectives can hang
    return state, losses


def _train_as_the_loop(exp, mesh) -> tuple[nnx.State, list[float]]:
    """`_train` with the training loop's program, which runs on the state's leaves."""
    graphdef, state = init_state(exp, mesh)
    step = LeafTrainStep(graphdef, state_shardings(state, mesh, exp.parallel), mesh)
    leaves, losses = step.leaves(state), []
    for batch in avdigits_batches(STEPS, BATCH, 2000):
        leaves, metrics = step(leaves, put_batch(batch, mesh))
        losses.append(float(metrics["loss"]))
    return step.state(leaves), losses


@pytest.fixture(scope="module")
def runs(experiment):
    """(FSDP state, losses) on a 2 x 2 data x fsdp mesh, trained as the loop trains, and
    (state, losses) replicated."""
    return _train_as_the_loop(experiment, data_mesh(fsdp=2)), _train(experiment, data_mesh())


def _values(state: nnx.State) -> list[np.ndarray]:
    return [
        np.asarray(
            jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        )
        for x in jax.tree.leaves(nnx.to_pure_dict(state))
    ]


def test_state_and_batch_are_split_over_fsdp(experiment, runs):
    (state, _), _ = runs
    flat = dict(nnx.to_flat_state(state))
    kernel = flat[(0, "fusion", "mlp", "layers", 1, "kernel")].get_value()
    moment = flat[(1, "opt_state", 1, 0, "mu", "fusion", "mlp", "layers", 1, "kernel")]
    for leaf in (kernel, moment.get_value()):
        assert leaf.sharding.spec == PartitionSpec(None, FSDP_AXIS)
        assert leaf.addressable_shards[0].data.shape == (128, 64)
    split = [x for x in jax.tree.leaves(state) if FSDP_AXIS in x.sharding.spec]
    assert len(split) > 20  # params and both Adam moments
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state) if x.size < 64)

    batch = put_batch(next(avdigits_batches(STEPS, BATCH, 2000)), data_mesh(fsdp=2))["label"]
    rows = {shard.index[0].start for shard in batch.addressable_shards}
    assert rows == {0, 2, 4, 6}  # every device its own two rows


def test_fsdp_steps_equal_replicated(runs):
    (fsdp, fsdp_losses), (replicated, replicated_losses) = runs
    np.testing.assert_allclose(fsdp_losses, replicated_losses, rtol=1e-5, atol=1e-5)
    for a, b in zip(_values(fsdp), _values(replicated), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_fsdp_checkpoint_restores_replicated(experiment, runs, tmp_path):
    (state, _), _ = runs
    checkpointer = Checkpointer(tmp_path, keep=1)
    try:
        checkpointer.save(STEPS, state, None, {}, {})
        checkpointer.manager.wait_until_finished()
        mesh = data_mesh()
        _, abstract = abstract_state(experiment)
        restored = checkpointer.restore(STEPS, abstract, state_shardings(abstract, mesh))
    finally:
        checkpointer.close()
    leaves = jax.tree.leaves(restored)
    assert all(x.sharding.is_fully_replicated and x.sharding.mesh == mesh for x in leaves)
    for a, b in zip(_values(restored), _values(state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_log_mel_computes_only_its_own_rows(experiment):
    """XLA splits an FFT only over its transformed axis: on a batch split over devices the
    log-mel's FFT was all-gathered and every device transformed the whole batch. In the
    compiled step no op of the log-mel is a collective and none has the global batch's rows."""
    mesh = data_mesh(fsdp=2)
    graphdef, state = abstract_state(experiment)
    step = make_train_step(graphdef, state_shardings(state, mesh, experiment.parallel), mesh)
    batch = next(avdigits_batches(1, BATCH, 2000))
    shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
    hlo = step.lower(state, shapes).compile().as_text()
    ops = [line.strip() for line in hlo.splitlines() if LOG_MEL_OP.search(line)]
    assert ops, "no op of the log-mel (named scope log_mel) in the compiled step"
    assert not [op for op in ops if COLLECTIVE.search(op)]
    # Only the batch axis can be 8 here (frames 26, n_fft 256, bins 129, mels 40): 2 rows each.
    rows = {int(n) for op in ops for n in re.findall(r"= f32\[(\d+),", op)}
    assert BATCH not in rows and BATCH // mesh.size in rows, rows
