"""Device mesh, shardings, global arrays built from per-process batches, and multi-host start-up.

One 1-D mesh axis, 'data', spans every device of every process. Batches are sharded along it;
the train state is replicated. `batch_size` in the config is always the GLOBAL batch: each
process loads `batch_size // jax.process_count()` examples and `global_batch` joins them.

Multi-host runs use JAX's multi-controller runtime: every process runs the same program, process
0 also hosts the coordination service, and `jax.devices()` lists the devices of all processes
(process 0's first), so the mesh and every jitted step span them all. launch/README.md shows how
to start the processes on one machine, under SLURM and on a Cloud TPU pod slice.
"""

import contextlib
import functools
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'

# Read when the matching config field is unset ('' / -1). JAX itself reads JAX_COORDINATOR_ADDRESS
# but not the other two; they are the names launch/local_multiprocess.sh exports.
ENV_COORDINATOR = 'JAX_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'JAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'JAX_PROCESS_ID'


def _env_int(name: str) -> int:
  value = os.environ.get(name, '')
  try:
    return int(value) if value else -1
  except ValueError:
    raise ValueError(f'environment variable {name}={value!r} is not an integer; set it to '
                     'a whole number or unset it.') from None


def distributed_args(coordinator_address: str = '', num_processes: int = -1,
                     process_id: int = -1) -> dict[str, Any]:
  """Keyword arguments for `jax.distributed.initialize`: config, else environment, else None.

  None leaves the value to JAX's cluster auto-detection (SLURM, Cloud TPU VM / GKE, Open MPI,
  Kubernetes). Given partially, the rest must come from the environment or auto-detection.
  """
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR, '')
  num_processes = num_processes if num_processes >= 0 else _env_int(ENV_NUM_PROCESSES)
  process_id = process_id if process_id >= 0 else _env_int(ENV_PROCESS_ID)
  if num_processes == 0 or (num_processes > 0 and process_id >= num_processes):
    raise ValueError(
        f'process_id={process_id} with num_processes={num_processes}: process ids run from 0 to '
        'num_processes - 1. Fix --config.distributed_process_id / _num_processes (or '
        f'{ENV_PROCESS_ID} / {ENV_NUM_PROCESSES}).')
  return {'coordinator_address': coordinator_address or None,
          'num_processes': num_processes if num_processes > 0 else None,
          'process_id': process_id if process_id >= 0 else None}


def initialize_distributed(enabled: bool, coordinator_address: str = '',
                           num_processes: int = -1, process_id: int = -1,
                           heartbeat_timeout_s: int = 100,
                           initialization_timeout_s: int = 300) -> None:
  """Starts `jax.distributed` when `enabled` (config.distributed); a no-op otherwise.

  Must run before anything asks JAX about devices: the backend is created once, and only a
  backend created after this call sees the other processes. Single-host runs skip it so they
  need no coordinator.

  heartbeat_timeout_s: a process silent for this long is declared dead and every other process
    stops with an error naming it, instead of waiting forever in a collective.
  initialization_timeout_s: how long to wait for all processes to connect at start-up.
  """
  if not enabled:
    return
  if jax.distributed.is_initialized():  # e.g. a notebook that already called it.
    return
  args = distributed_args(coordinator_address, num_processes, process_id)
  if args['num_processes'] == 1 and args['process_id'] in (None, 0):
    # One process needs no coordination service; skipping it also skips a localhost port.
    return
  try:
    jax.distributed.initialize(
        **args, initialization_timeout=int(initialization_timeout_s),
        heartbeat_timeout_seconds=int(heartbeat_timeout_s))
  except (ValueError, RuntimeError) as e:
    shown = ', '.join(f'{k}={v}' for k, v in args.items())
    raise RuntimeError(
        f'jax.distributed.initialize failed ({shown}, after waiting up to '
        f'{initialization_timeout_s} s): {e}. Fix: start every process with the same '
        f'coordinator address and process count and a distinct process id (--config.'
        f'distributed_* or {ENV_COORDINATOR} / {ENV_NUM_PROCESSES} / {ENV_PROCESS_ID}; see '
        'launch/README.md), or run under SLURM / on a Cloud TPU VM where JAX detects them.'
    ) from e


def create_mesh(devices: list | None = None) -> Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def with_abstract_mesh(fn, mesh: Mesh):
  """`fn` traced with `mesh` as JAX's abstract mesh, for ops that split themselves over 'data'.

  XLA's partitioner cannot split a foreign-function call (models/onednn_conv.py): it would
  gather the call's operands onto every device. Such an op reads the abstract mesh while it is
  traced and runs itself per device under `shard_map` instead.
  """
  @functools.wraps(fn)
  def traced_on_mesh(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)

  return traced_on_mesh


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


@contextlib.contextmanager
def naming_lost_peers():
  """Re-raises a failed cross-process collective as an error that says a peer process died.

  Which peer is lost is reported in one of two ways: the coordination service aborts every
  survivor once the dead process misses heartbeat_timeout_s of heartbeats ("tasks are unhealthy
  (stopped sending heartbeats): <ids>"), or, sooner, a collective fails on a closed connection,
  which only names a socket address; this adds which process we are and what to look for.
  """
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    raise RuntimeError(
        f'process {jax.process_index()} of {jax.process_count()} lost contact with another '
        f'process during a cross-process operation ({str(e).strip().splitlines()[0]}). A peer '
        'process most likely died or was killed: its own log shows why. Fix that process, '
        'then restart ALL processes with the same command; training resumes from the last '
        'checkpoint.') from e
