"""How the train state is written: within one process, each replicated array from one device."""

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from mmjax.parallel import data_mesh
from mmjax.train.checkpoint import Checkpointer

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


def test_one_process_saves_replicated_arrays_without_compiling_slices(tmp_path):
    """Orbax's default slices every replicated array into one part per device (for the hosts
    of a multi-process run to share the write): a program compiled per distinct shape at a
    run's first save, 6 s for a ResNet-50 state. With one process there is no one to share
    with; mmjax writes each array whole."""
    layers = [nnx.Linear(11 + i, 13 + i, rngs=nnx.Rngs(i)) for i in range(4)]
    state = nnx.state(nnx.List(layers))
    state = jax.device_put(state, NamedSharding(data_mesh(), PartitionSpec()))
    compiled = []

    def listener(event: str, duration: float, **_) -> None:
        if event == BACKEND_COMPILE:
            compiled.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        checkpointer = Checkpointer(tmp_path, keep=1)
        checkpointer.save(1, state, None, {}, {})
        checkpointer.close()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiled == [], f"{len(compiled)} programs compiled while saving"

    reader = Checkpointer(tmp_path, keep=1, read_only=True)
    restored = reader.restore(1, state, jax.tree.map(lambda x: x.sharding, state))
    reader.close()
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert b.sharding.is_equivalent_to(a.sharding, a.ndim)
