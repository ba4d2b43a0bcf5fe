"""Train and evaluate: python -m resnet_jax.main --config=configs/r50.py --workdir=DIR.

Override any field with --config.<field>=<value>, e.g. --config.optim.base_lr=0.2.
"""

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/digits.py', 'Training configuration file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
flags.mark_flags_as_required(['workdir'])


def _process_count(config) -> int:
  """Processes in the job: the config's or launcher's count, 1 if not distributed, 0 if unknown
  until a cluster says so at initialisation."""
  if config.distributed_num_processes > 0:
    return config.distributed_num_processes
  if not config.distributed:
    return 1
  import os
  return int(os.environ.get('JAX_NUM_PROCESSES', '0'))


def _cpu_devices(config) -> int:
  """config.cpu_devices, with 0 (auto) resolved against this process's share of the batch."""
  if config.cpu_devices > 0:
    return config.cpu_devices
  per_device_multiple = max(1, _process_count(config)) * config.optim.grad_accum_steps
  if config.batch_size <= 0 or config.batch_size % per_device_multiple:
    return 1  # The validator reports the batch size with a fix; do not add a second problem.
  from resnet_jax import xla_flags
  from resnet_jax.models import residual_blocks
  return xla_flags.auto_cpu_devices(config.batch_size // per_device_multiple,
                                    blocks=residual_blocks(config.model.name),
                                    image_size=config.data.image_size)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}; pass options as --flag=value.')
  config = _CONFIG.value
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO, breaking the bar.
  from resnet_jax import xla_flags
  # Before the first device query starts the XLA backend.
  xla_flags.apply_defaults(cpu_devices=_cpu_devices(config), processes=_process_count(config))
  # jax.distributed must start before anything asks jax about devices.
  from resnet_jax import parallel
  parallel.initialize_distributed(
      config.distributed, config.distributed_coordinator, config.distributed_num_processes,
      config.distributed_process_id, heartbeat_timeout_s=config.distributed_heartbeat_timeout_s,
      initialization_timeout_s=config.distributed_init_timeout_s)
  import jax

  from resnet_jax import compilation_cache, config_validation, train
  config_validation.validate_config(config, num_devices=jax.device_count())
  compilation_cache.enable(config.compilation_cache_dir)
  from resnet_jax import checkpoint, preemption
  try:
    train.train_and_evaluate(config, _WORKDIR.value)
  except preemption.Preempted as e:  # Checkpoint written: a clean exit lets the scheduler retry.
    print(e, flush=True)
    return
  except (checkpoint.CheckpointError, FloatingPointError) as e:
    # These messages name the step, file and fix; a traceback through orbax adds nothing.
    raise SystemExit(f'error: {e}') from None
  if jax.process_index() == 0:  # Curves PNG and where every output is (what `make demo` shows).
    from resnet_jax import report
    report.summarize_run(_WORKDIR.value)


if __name__ == '__main__':
  from resnet_jax import host_malloc
  host_malloc.reexec_with_tunables()  # Malloc that reuses each step's buffers (host_malloc.py).
  app.run(main)
