"""Device mesh, shardings, and global arrays built from per-process batches.

One 1-D mesh axis, 'data', spans every device of every process. Batches are sharded along it;
the train state is replicated. `batch_size` in the config is always the GLOBAL batch: each
process loads `batch_size // jax.process_count()` examples and `global_batch` joins them.
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'


def initialize_distributed(enabled: bool) -> None:
  """Calls `jax.distributed.initialize()` (cluster auto-detected) when multi-host is enabled."""
  # Must run before anything queries devices; single-host runs skip it so no coordinator is needed.
  if enabled:
    jax.distributed.initialize()


def create_mesh(devices: list | None = None) -> Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'; other axes whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device of the mesh."""
  return NamedSharding(mesh, PartitionSpec())


def per_process_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """The slice of the global batch one process loads; raises if it cannot split evenly."""
  num_devices = mesh.devices.size
  if global_batch_size % num_devices:
    raise ValueError(
        f'batch_size={global_batch_size} does not divide over {num_devices} devices; '
        f'set --config.batch_size to a multiple of {num_devices}.')
  return global_batch_size // jax.process_count()


def global_batch(mesh: Mesh, local_batch: dict[str, Any]) -> dict[str, jax.Array]:
  """Joins each process's numpy batch into one global jax.Array sharded over 'data'."""
  sharding = data_sharding(mesh)
  return {
      key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
      for key, value in local_batch.items()
  }


def replicate(mesh: Mesh, tree: Any) -> Any:
  """Places a pytree as a full copy on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))
