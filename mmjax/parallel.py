"""Device mesh, shardings and batch placement (data parallelism over every device and host)."""

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from mmjax.errors import ConfigError

DATA_AXIS = "data"


def data_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh, axis `data`, over `devices` (default: every device of every process)."""
    devices = list(devices) if devices is not None else jax.devices()
    return jax.make_mesh(
        (len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices
    )


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`; other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: jax.sharding.Mesh, field: str) -> None:
    if global_batch % mesh.size:
        raise ConfigError(
            f"{field} ({global_batch}) must be divisible by the number of devices ({mesh.size})"
        )


def put_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Stitch host-local batches [B_local, ...] into global arrays [B, ...] sharded on `data`."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
