"""Orbax checkpoints of {train state, data-iterator state} under WORKDIR/checkpoints.

Layout: WORKDIR/checkpoints/<step>/state (the TrainState pytree, sharded arrays) and
WORKDIR/checkpoints/<step>/data (one grain iterator-state JSON per process). Orbax writes each
step to a temporary directory and renames it when complete, so `latest_step` never names a
half-written checkpoint. Resume order (see restore_or_init in train.py): the workdir's latest
checkpoint -> config.init_checkpoint (weights only) -> fresh init.
"""

import os
from typing import Any

import grain.checkpoint
import jax
import orbax.checkpoint as ocp

STATE = 'state'
DATA = 'data'


def create_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """A manager for WORKDIR/checkpoints keeping the `keep` newest steps."""
  # The trainer decides when to save (every_steps and the last step); orbax's own interval
  # policy would also save the first step it sees, so it is not used.
  options = ocp.CheckpointManagerOptions(max_to_keep=max(int(keep), 1), create=True)
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options,
      item_names=(STATE, DATA))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator: Any) -> None:
  """Saves `state` and the data iterator's position as checkpoint `step` (asynchronously)."""
  # Orbax copies device arrays to host before returning, so the caller may donate `state` next.
  args = ocp.args.Composite(**{
      STATE: ocp.args.StandardSave(state),
      DATA: grain.checkpoint.CheckpointSave(data_iterator),
  })
  manager.save(int(step), args=args, force=True)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   data_iterator: Any) -> tuple[Any, int] | None:
  """(state, step) from the newest checkpoint, also rewinding `data_iterator`; None if none."""
  step = manager.latest_step()
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(**{
      STATE: ocp.args.StandardRestore(abstract_state),
      DATA: grain.checkpoint.CheckpointRestore(data_iterator),
  }))
  return restored[STATE], int(step)


def restore_state(path: str, abstract_state: Any) -> Any:
  """The train state stored at `path` (a checkpoint step directory or its 'state' subfolder)."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, STATE)):
    path = os.path.join(path, STATE)
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f'init_checkpoint={path!r} is not a directory; expected WORKDIR/checkpoints/<step> '
        'of an earlier run.')
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path, abstract_state)


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) describing `tree`, the target orbax restores into."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
