"""Device mesh, shardings and batch placement.

The mesh is 2-D, `data x fsdp`, over every device of every process. The batch is split over
both axes, so every device sees distinct rows; the train state is replicated over `data` and,
array by array, either replicated or split over `fsdp` (`fsdp_spec`, ZeRO-3 style).
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from mmjax.errors import ConfigError

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)


def data_mesh(devices: Sequence[jax.Device] | None = None, *, fsdp: int = 1) -> jax.sharding.Mesh:
    """A `data x fsdp` mesh of shape (n // fsdp, fsdp) over `devices` (default: every device
    of every process); the default fsdp=1 is pure data parallelism."""
    devices = list(devices) if devices is not None else jax.devices()
    if fsdp < 1 or len(devices) % fsdp:
        raise ConfigError(
            f"parallel.fsdp ({fsdp}) must be >= 1 and divide the number of devices ({len(devices)})"
        )
    return jax.make_mesh(
        (len(devices) // fsdp, fsdp),
        BATCH_AXES,
        axis_types=(AxisType.Auto, AxisType.Auto),
        devices=devices,
    )


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data` and `fsdp` together; other axes whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int) -> PartitionSpec:
    """Where an array of `shape` lives on an `fsdp` axis of `fsdp_size` devices.

    Replicated when fsdp_size is 1, when the array has fewer than `min_size` elements, or when
    no axis length is divisible by fsdp_size; otherwise its largest divisible axis is split over
    `fsdp`. Among equally long axes the last wins: it is the output-feature axis of dense
    [in, out] and conv [..., in, out] kernels, and any fixed choice gives an optimizer moment
    the layout of its parameter, as they share the shape.
    """
    if fsdp_size == 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    divisible = [i for i, n in enumerate(shape) if n % fsdp_size == 0]
    if not divisible:
        return PartitionSpec()
    axis = max(divisible, key=lambda i: (shape[i], i))
    return PartitionSpec(*([None] * axis), FSDP_AXIS)


def fsdp_shardings(tree: Any, mesh: jax.sharding.Mesh, min_size: int) -> Any:
    """A NamedSharding per leaf (array or ShapeDtypeStruct) of `tree` by `fsdp_spec` over the
    mesh's `fsdp` axis; every leaf is replicated over `data`."""
    fsdp_size = mesh.shape[FSDP_AXIS]
    return jax.tree.map(
        lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x), fsdp_size, min_size)), tree
    )


def check_batch_size(global_batch: int, mesh: jax.sharding.Mesh, field: str) -> None:
    if global_batch % mesh.size:
        raise ConfigError(
            f"{field} ({global_batch}) must be divisible by the number of devices ({mesh.size})"
        )


def copies_batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
    """A sweep's batches [S, B, ...]: the copies axis whole, the batch axis as `batch_sharded`."""
    return NamedSharding(mesh, PartitionSpec(None, BATCH_AXES))


def put_copies_batch(
    batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh
) -> dict[str, jax.Array]:
    """Stitch host-local batches of every copy [S, B_local, ...] into global arrays [S, B, ...]."""
    sharding = copies_batch_sharded(mesh)
    return {
        k: jax.make_array_from_process_local_data(
            sharding, v, (v.shape[0], v.shape[1] * jax.process_count(), *v.shape[2:])
        )
        for k, v in batch.items()
    }


def put_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Stitch host-local batches [B_local, ...] into global arrays [B, ...] split over
    `data x fsdp`."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
