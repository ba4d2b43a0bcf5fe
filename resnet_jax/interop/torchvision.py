"""torchvision state_dict <-> Flax variables, both ways, for the ResNet family.

Our module names mirror torchvision's (`layer1_0/downsample_conv` is `layer1.0.downsample.0`),
so conversion is a renaming plus a layout change: conv kernels HWIO <-> OIHW, dense kernels
(in, out) <-> (out, in). Both directions check every key and shape against the model, so a
file for another architecture fails with the names that differ instead of loading half-way.

Reads `.pth`/`.pt` (torch, weights_only) and `.safetensors` (no torch needed) files.
"""

import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from resnet_jax.models import create_model, model_fields, scan

# The torchvision models these names load; the converter itself is generic over our ResNets.
TORCHVISION_MODELS = (
  'resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152',
  'resnext50_32x4d', 'resnext101_32x8d', 'resnext101_64x4d',
  'wide_resnet50_2', 'wide_resnet101_2',
  'vgg11', 'vgg13', 'vgg16', 'vgg19', 'vgg11_bn', 'vgg13_bn', 'vgg16_bn', 'vgg19_bn',
  'googlenet',
)

_LEAF_TO_TORCH = {
  ('params', 'kernel'): 'weight',
  ('params', 'scale'): 'weight',
  ('params', 'bias'): 'bias',
  ('batch_stats', 'mean'): 'running_mean',
  ('batch_stats', 'var'): 'running_var',
}
_MODULE_TO_TORCH = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}
# torch Sequential children: `layer1_0` is `layer1.0`; VGG's `features_3`, `classifier_6`, and
# GoogLeNet's `branch2_1` likewise.
_SEQUENTIAL = re.compile(r'^(layer\d+|features|classifier|branch\d)_(\d+)$')
_IGNORED_TORCH_SUFFIXES = ('num_batches_tracked',)
_HEAD_KEYS = ('fc.weight', 'classifier.6.weight')  # ResNet/GoogLeNet, VGG: gives num_classes


def torch_key(collection: str, path: tuple[str, ...]) -> str:
  """The torchvision state_dict key of one Flax leaf, e.g. ('layer1_0', 'bn1', 'scale')."""
  *modules, leaf = path
  parts = [_MODULE_TO_TORCH.get(m, _SEQUENTIAL.sub(r'\1.\2', m)) for m in modules]
  return '.'.join([*parts, _LEAF_TO_TORCH[(collection, leaf)]])


def _to_torch_layout(x: np.ndarray) -> np.ndarray:
  if x.ndim == 4:  # conv kernel HWIO -> OIHW
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1))
  if x.ndim == 2:  # dense kernel (in, out) -> (out, in)
    return np.ascontiguousarray(x.T)
  return x


def _from_torch_layout(x: np.ndarray) -> np.ndarray:
  if x.ndim == 4:
    return np.ascontiguousarray(x.transpose(2, 3, 1, 0))
  if x.ndim == 2:
    return np.ascontiguousarray(x.T)
  return x


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A state_dict file as numpy arrays: .safetensors directly, .pth/.pt through torch."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'No weights file at {path!r}.')
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file

    return load_file(path)
  try:
    import torch
  except ImportError as e:
    raise ImportError(
      f'Reading {path!r} needs torch (pip install "resnet_jax[torch]"), or convert it to '
      '.safetensors elsewhere.'
    ) from e
  state = torch.load(path, map_location='cpu', weights_only=True)
  if isinstance(state, dict) and 'state_dict' in state and isinstance(state['state_dict'], dict):
    state = state['state_dict']  # training checkpoints often wrap the weights
  return {k.removeprefix('module.'): v.numpy() for k, v in state.items() if hasattr(v, 'numpy')}


def _as_numpy(state_dict: dict[str, Any]) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy() if hasattr(v, 'detach') else np.asarray(v)
          for k, v in state_dict.items()}


def _abstract_variables(model_name: str, num_classes: int, **overrides):
  model = create_model(model_name, num_classes=num_classes, **overrides)
  # Spatial size does not change any parameter shape: 64x64 keeps the trace cheap.
  return jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
  )


def from_torchvision(state_dict_or_path, model_name: str, **overrides) -> dict[str, Any]:
  """{'params', 'batch_stats'} for `model_name` from a torchvision state_dict or weights file.

  num_classes is read from `fc.weight`; other model fields can be overridden (e.g. dtype).
  """
  if isinstance(state_dict_or_path, (str, os.PathLike)):
    state = load_state_dict(state_dict_or_path)
  else:
    state = _as_numpy(state_dict_or_path)
  head = next((k for k in _HEAD_KEYS if k in state), None)
  num_classes = state[head].shape[0] if head else 1000
  if model_name == 'googlenet' and 'aux1.fc2.weight' in state:
    # torchvision builds googlenet with aux heads unless told otherwise; ours defaults to none.
    overrides.setdefault('aux_logits', True)
  scanned = overrides.pop('scan_blocks', False)  # converted in the unrolled layout, then stacked
  abstract = _abstract_variables(model_name, num_classes, **overrides)
  out, used, problems = {}, set(), []
  for collection in ('params', 'batch_stats'):
    # VGG without BN has no 'batch_stats' at all.
    flat = traverse_util.flatten_dict(abstract.get(collection, {}))
    converted = {}
    for path, leaf in flat.items():
      key = torch_key(collection, path)
      if key not in state:
        problems.append(f'missing {key} (for {collection}/{"/".join(path)})')
        continue
      value = _from_torch_layout(np.asarray(state[key], np.float32))
      if value.shape != leaf.shape:
        problems.append(f'{key}: file has {state[key].shape}, {model_name} needs '
                        f'{_to_torch_layout(np.zeros(leaf.shape)).shape}')
        continue
      converted[path] = value
      used.add(key)
    out[collection] = traverse_util.unflatten_dict(converted)
  unused = sorted(k for k in state if k not in used and not k.endswith(_IGNORED_TORCH_SUFFIXES))
  problems += [f'unexpected {k} in the file' for k in unused]
  if problems:
    shown = '\n  '.join(problems[:20])
    more = f'\n  ... and {len(problems) - 20} more' if len(problems) > 20 else ''
    raise ValueError(
      f'These weights do not fit {model_name!r} ({len(problems)} problems):\n  {shown}{more}\n'
      'Check the model name (resnet_jax.models.list_models()) against the file.'
    )
  if scanned:
    stages = overrides.get('stage_sizes', model_fields(model_name)['stage_sizes'])
    return scan.stack(out, stages)
  return out


def to_torchvision(variables: dict[str, Any], model_name: str, as_torch: bool = True):
  """A torchvision state_dict (torch tensors, or numpy with as_torch=False) for `variables`."""
  del model_name  # the names follow from the variables; kept for a symmetric, explicit call
  variables = scan.unroll(variables)  # torchvision's layout is the unrolled one
  state = {}
  for collection in ('params', 'batch_stats'):
    for path, value in traverse_util.flatten_dict(variables.get(collection, {})).items():
      state[torch_key(collection, path)] = _to_torch_layout(np.asarray(value))
  for key in [k for k in state if k.endswith('running_var')]:
    # torchvision's BatchNorm keeps this counter; 0 is what a loaded, untrained model has.
    state[key.replace('running_var', 'num_batches_tracked')] = np.zeros((), np.int64)
  if not as_torch:
    return state
  import torch

  return {k: torch.from_numpy(v.copy()) for k, v in state.items()}
