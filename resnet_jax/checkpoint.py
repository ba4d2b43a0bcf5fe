"""Orbax checkpoints of {train state, data-iterator state, resolved config}: WORKDIR/checkpoints.

Layout: WORKDIR/checkpoints/<step>/state (the TrainState pytree: step, params, batch_stats,
opt_state, rng, ema_params), <step>/data (one grain iterator-state JSON per process) and
<step>/config (the resolved config as JSON). Orbax writes a step into
`<step>.orbax-checkpoint-tmp-<time>` and renames it only after every item is complete, so the
three items appear together or not at all; leftovers of a killed write are deleted when the
next run opens the directory (cleanup_tmp_directories).

Restoring walks the steps newest first and takes the first one that restores; a step that does
not (truncated or corrupt files) is skipped with a warning naming the step and the error. A
*valid* checkpoint whose parameter shapes differ from the model is never skipped: that is a
configuration mistake, reported with the parameter and both shapes.
"""

import errno
import os
from typing import Any

import grain.checkpoint
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint._src.checkpoint_managers import preservation_policy as ocp_policy

STATE = 'state'
DATA = 'data'
CONFIG = 'config'
TMP_MARKER = '.orbax-checkpoint-tmp'  # orbax's suffix for a step still being written.


class CheckpointError(RuntimeError):
  """A checkpoint cannot be written or none of the existing ones can be read."""


class ShapeMismatchError(CheckpointError):
  """A checkpoint's parameter shapes differ from the model being trained."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def check_writable(workdir: str) -> None:
  """Raises CheckpointError now, not at the first save, if WORKDIR/checkpoints is unwritable."""
  directory = checkpoint_dir(workdir)
  probe = os.path.join(directory, f'.write_probe_{os.getpid()}')
  try:
    os.makedirs(directory, exist_ok=True)
    with open(probe, 'wb') as f:  # A few KB: a disk with no room at all fails here.
      f.write(b'\0' * 4096)
      f.flush()
      os.fsync(f.fileno())
    os.remove(probe)
  except OSError as e:
    reason = 'the disk is full' if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else (
        e.strerror or str(e))
    raise CheckpointError(
        f'cannot write checkpoints to {directory}: {reason} ({e}). Fix: pass a writable '
        '--workdir with free space.') from e


def create_manager(workdir: str, ckpt_config) -> ocp.CheckpointManager:
  """A manager keeping the `keep` newest steps plus the `keep_best` best by `best_metric`."""
  directory = checkpoint_dir(workdir)
  leftovers = sorted(n for n in os.listdir(directory) if TMP_MARKER in n) if os.path.isdir(
      directory) else []
  if leftovers:
    logging.warning('Deleting incomplete checkpoint writes in %s (a run was killed while '
                    'saving): %s', directory, ', '.join(leftovers))
  policies = [ocp_policy.LatestN(n=max(int(ckpt_config.keep), 1))]
  if ckpt_config.keep_best > 0:
    metric = ckpt_config.best_metric
    policies.append(ocp_policy.BestN(
        get_metric_fn=lambda metrics: metrics[metric], n=int(ckpt_config.keep_best),
        # BestN keeps the *last* n after sorting; reverse puts the smallest last for 'min'.
        reverse=ckpt_config.best_mode == 'min', keep_checkpoints_without_metrics=False))
  # The trainer decides when to save (every_steps, the last step, a signal); orbax's own
  # interval policy would also save the first step it sees, so it is not used.
  options = ocp.CheckpointManagerOptions(
      create=True, cleanup_tmp_directories=True,
      preservation_policy=ocp_policy.AnyPreservationPolicy(policies))
  return ocp.CheckpointManager(directory, options=options, item_names=(STATE, DATA, CONFIG))


def _write_failed(manager, what: str, e: Exception) -> CheckpointError:
  return CheckpointError(
      f'writing {what} to {manager.directory} failed: {e!r}. The run stops rather than go on '
      'without a checkpoint. Fix: free disk space or pass a writable --workdir, then run the '
      'same command to resume from the last saved step.')


def check_errors(manager: ocp.CheckpointManager, step: int) -> None:
  """Raises CheckpointError if the async write of checkpoint `step` (or an older one) failed.

  Non-blocking: a write still in progress is checked at the next call.
  """
  try:
    manager.check_for_errors()
  except Exception as e:
    raise _write_failed(manager, f'checkpoint step {step}', e) from e


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator: Any,
         config_dict: dict, metrics: dict[str, float] | None = None,
         save_data_state: bool = True, previous_step: int | None = None) -> None:
  """Starts an async save of checkpoint `step`; raises CheckpointError if a write failed."""
  items = {STATE: ocp.args.StandardSave(state), CONFIG: ocp.args.JsonSave(config_dict)}
  if save_data_state:
    items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
  try:
    # Orbax copies device arrays to host before returning, so the caller may donate `state`
    # next; it also re-raises an error of the previous async write here.
    manager.save(int(step), args=ocp.args.Composite(**items), metrics=metrics, force=True)
  except Exception as e:
    what = f'checkpoint step {step}' if previous_step is None else (
        f'checkpoint step {previous_step} (async) or {step}')
    raise _write_failed(manager, what, e) from e


def wait(manager: ocp.CheckpointManager) -> None:
  """Blocks until every started save is on disk; raises CheckpointError if one failed."""
  try:
    manager.wait_until_finished()
  except Exception as e:
    raise _write_failed(manager, f'checkpoint step {manager.latest_step()}', e) from e


def path_name(path: tuple) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def tree_shapes(tree: Any) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {path_name(p): tuple(leaf.shape) for p, leaf in leaves if hasattr(leaf, 'shape')}


def check_shapes(saved: dict[str, tuple], expected: dict[str, tuple], where: str) -> None:
  """Raises ShapeMismatchError naming every parameter whose saved shape differs."""
  problems = [f'{name}: checkpoint {saved[name]}, model {shape}'
              for name, shape in expected.items() if name in saved and saved[name] != shape]
  missing = sorted(set(expected) - set(saved))
  problems += [f'{name}: not in the checkpoint' for name in missing]
  if problems:
    shown = '\n  '.join(problems[:10]) + (
        f'\n  ... and {len(problems) - 10} more' if len(problems) > 10 else '')
    raise ShapeMismatchError(
        f'{where} does not fit the model:\n  {shown}\nFix: use a new --workdir for a '
        'different model/num_classes, or start from these weights with '
        '--config.init_checkpoint=<that checkpoint> (fine-tuning re-initialises the head).')


def _weight_shapes(tree: Any) -> dict[str, tuple]:
  """Shapes of params/batch_stats leaves: the part whose layout is fixed by the model."""
  if not isinstance(tree, dict):
    tree = {k: getattr(tree, k) for k in ('params', 'batch_stats')}
  return tree_shapes({k: tree[k] for k in ('params', 'batch_stats') if k in tree})


def saved_state_metadata(step_dir: str) -> dict:
  """The saved TrainState's tree of array metadata (shape, dtype) without reading arrays."""
  with ocp.StandardCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(os.path.join(step_dir, STATE)).item_metadata
  tree = getattr(metadata, 'tree', metadata)
  if not isinstance(tree, dict) or 'params' not in tree:
    raise ValueError(f'the metadata in {os.path.join(step_dir, STATE)} is missing or '
                     'unreadable')
  return tree


def _first_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0] if text else ""}'[:400]


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any, data_iterator: Any,
                   restore_data_state: bool = True) -> tuple[Any, int] | None:
  """(state, step) from the newest checkpoint that restores, rewinding `data_iterator`.

  None if the directory has no checkpoint; CheckpointError if it has some but none restores.
  """
  manager.reload()  # Steps written by an earlier process, read fresh from disk.
  steps = sorted(manager.all_steps(), reverse=True)
  failures = []
  for step in steps:
    step_dir = os.path.join(str(manager.directory), str(step))
    try:
      saved = saved_state_metadata(step_dir)
    except Exception as e:
      failures.append(_skip_step(manager, step, step_dir, 'is unreadable', e))
      continue
    check_shapes(_weight_shapes(saved), _weight_shapes(abstract_state),
                 f'checkpoint {step_dir}')
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    has_data = os.path.isdir(os.path.join(step_dir, DATA))
    if restore_data_state and has_data:
      items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    elif restore_data_state:
      logging.warning('Checkpoint %s has no data-iterator state (saved with '
                      'checkpoint.save_data_state=False): the data order restarts.', step_dir)
    try:
      restored = manager.restore(step, args=ocp.args.Composite(**items))
      _check_finite_leaves(restored[STATE], step_dir)
    except ShapeMismatchError:
      raise
    except Exception as e:
      failures.append(_skip_step(manager, step, step_dir, 'does not restore', e))
      continue
    if failures:
      logging.warning('Resumed from step %d after skipping %d unreadable checkpoint(s).', step,
                      len(failures))
      manager.reload()  # Forget the quarantined steps.
    return restored[STATE], int(step)
  if failures:
    raise CheckpointError(
        f'no valid checkpoint in {manager.directory}; every step failed to restore:\n  '
        + '\n  '.join(failures) + '\nThey were moved to <step>.corrupt. Fix: restore them from '
        'a backup, or run again to start fresh.')
  return None


def _skip_step(manager: ocp.CheckpointManager, step: int, step_dir: str, problem: str,
               error: Exception) -> str:
  """Warns, quarantines the step and returns the line the final error would list it with."""
  logging.warning('Checkpoint step %d in %s %s, trying the previous one: %s', step, step_dir,
                  problem, _first_line(error))
  _quarantine(manager, step_dir)
  return f'step {step} ({step_dir}): {_first_line(error)}'


def _quarantine(manager: ocp.CheckpointManager, step_dir: str) -> None:
  # Out of orbax's way (it would refuse to save this step again) but kept for inspection.
  target, n = f'{step_dir}.corrupt', 1
  while os.path.exists(target):
    target, n = f'{step_dir}.corrupt{n}', n + 1
  if jax.process_index() == 0:
    os.rename(step_dir, target)
  logging.warning('Moved the unreadable checkpoint %s to %s.', step_dir, target)


def _check_finite_leaves(state: Any, step_dir: str) -> None:
  # Cheap (one reduction per leaf) and catches bit-rot that tensorstore reads without error.
  for name, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    if hasattr(leaf, 'dtype') and np.issubdtype(leaf.dtype, np.floating):
      if not bool(jax.numpy.isfinite(leaf).all()):
        raise ValueError(f'{path_name(name)} holds non-finite values in {step_dir}')


def resolve_step_dir(path: str) -> str:
  """A step directory from `path`: a step dir, a checkpoints dir, or a run's workdir."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, STATE)):
    return path
  for directory in (os.path.join(path, 'checkpoints'), path):
    if os.path.isdir(directory):
      steps = [int(n) for n in os.listdir(directory) if n.isdigit()
               and os.path.isdir(os.path.join(directory, n, STATE))]
      if steps:
        return os.path.join(directory, str(max(steps)))
  raise FileNotFoundError(
      f'init_checkpoint={path!r} is neither a checkpoint step directory (with a {STATE!r} '
      'folder), a checkpoints directory, nor a workdir holding one, nor a torchvision '
      '.pth/.pt/.safetensors file. Fix: point it at one of those.')


def restore_arrays(step_dir: str, sharding: Any) -> dict[str, Any]:
  """The whole saved TrainState of `step_dir` as a dict, at the saved shapes, on `sharding`.

  Independent of the device count at save time: every array is placed as `sharding` says.
  """
  metadata = saved_state_metadata(step_dir)
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), metadata)
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(os.path.join(step_dir, STATE), target)


def restore_weights(path: str, sharding: Any) -> dict[str, Any]:
  """{'params', 'batch_stats'} of our checkpoint at `path` (step dir, checkpoints dir or
  workdir), with the shapes it was saved with (they may differ from the model: fine-tuning)."""
  restored = restore_arrays(resolve_step_dir(path), sharding)
  return {'params': restored['params'], 'batch_stats': restored.get('batch_stats', {})}


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) describing `tree`, the target orbax restores into."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
