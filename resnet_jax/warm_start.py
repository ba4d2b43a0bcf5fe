"""Where a run starts: the workdir's latest valid checkpoint, else init_checkpoint weights (ours
or torchvision's, a head of another class count re-initialised), else the fresh state."""

import os
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from resnet_jax import checkpoint, parallel
from resnet_jax.steps import TrainState

HEAD = 'fc'  # The classifier's module name: re-initialised when fine-tuning to new classes.
_TORCH_SUFFIXES = ('.pth', '.pt', '.safetensors')


def load_init_weights(path: str, model_config, mesh) -> dict[str, Any]:
  """{'params', 'batch_stats'} from our checkpoint (step dir, checkpoints dir or workdir) or a
  torchvision .pth/.pt/.safetensors file, at the shapes stored there."""
  if path.endswith(_TORCH_SUFFIXES) and os.path.isfile(path):
    from resnet_jax.interop import torchvision  # Imported late: only fine-tuning needs it.
    overrides = {'scan_blocks': True} if model_config.get('scan_blocks', False) else {}
    variables = torchvision.from_torchvision(path, model_config.name, **overrides)
    return jax.device_put(variables, parallel.replicated(mesh))
  return checkpoint.restore_weights(path, parallel.replicated(mesh))


def merge_init_weights(state: TrainState, loaded: dict[str, Any], source: str) -> TrainState:
  """`state` with `loaded` params/batch_stats; a head of another shape keeps its fresh init."""
  fresh = {'params': state.params, 'batch_stats': state.batch_stats}
  saved_shapes = checkpoint.tree_shapes(loaded)
  flat, treedef = jax.tree_util.tree_flatten_with_path(fresh)
  reinit, mismatched, leaves = [], [], []
  for path, leaf in flat:
    name = checkpoint.path_name(path)
    value = _lookup(loaded, name)
    if value is not None and tuple(value.shape) == tuple(leaf.shape):
      leaves.append(jnp.asarray(value, leaf.dtype))
    elif value is not None and name.split('/')[1:2] == [HEAD]:
      reinit.append(f'{name} {tuple(value.shape)} -> {tuple(leaf.shape)}')
      leaves.append(leaf)
    else:
      mismatched.append(name)
      leaves.append(leaf)
  if mismatched:  # Outside the head a different shape is another architecture: refuse.
    fresh_shapes = checkpoint.tree_shapes(fresh)
    checkpoint.check_shapes(saved_shapes, {k: fresh_shapes[k] for k in mismatched},
                            f'init_checkpoint {source}')
  if reinit:
    logging.warning('init_checkpoint %s: the head %r has another number of classes; it is '
                    're-initialised (%s). Every other weight is loaded.', source, HEAD,
                    ', '.join(reinit))
  merged = jax.tree_util.tree_unflatten(treedef, leaves)
  merged = jax.device_put(merged, jax.tree.map(lambda x: x.sharding, fresh))
  ema = merged['params'] if state.ema_params else state.ema_params
  return state.replace(params=merged['params'], batch_stats=merged['batch_stats'],
                       ema_params=ema)


def _lookup(tree: dict, name: str):
  for key in name.split('/'):
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree


def restore_or_init(manager, state: TrainState, data_iterator, config, mesh):
  """(state, start_step) in the resume order: the workdir's latest *valid* checkpoint (state and
  data position) -> config.init_checkpoint (weights only, step 0) -> the fresh `state`."""
  abstract = checkpoint.abstract_like(state)
  restored = checkpoint.restore_latest(manager, abstract, data_iterator,
                                       restore_data_state=config.checkpoint.save_data_state)
  if restored is not None:
    logging.warning('Resuming from checkpoint step %d in %s.', restored[1], manager.directory)
    return restored
  if config.init_checkpoint:
    loaded = load_init_weights(config.init_checkpoint, config.model, mesh)
    logging.warning('No checkpoint in %s: starting from the weights in init_checkpoint=%s.',
                    manager.directory, config.init_checkpoint)
    return merge_init_weights(state, loaded, config.init_checkpoint), 0
  return state, 0
