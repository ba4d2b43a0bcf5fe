"""keras.applications ResNet weights -> Flax variables for the `keras_resnet*` models.

Our KerasResNet names its modules after Keras' layers (`conv2_block1_1_conv`), and Keras' conv
(H, W, in, out) and dense (in, out) kernels are already Flax's layout, so loading is a lookup by
layer name. Every leaf is checked both ways (missing, unexpected, shape), as in interop.torchvision.

Accepts a live `keras.Model` or a weights file (`.weights.h5` of Keras 3, or the legacy `.h5`
that keras.applications downloads), the latter read through Keras itself (the `keras` extra).
"""

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from resnet_jax.models import create_model

# Our name -> keras.applications constructor name.
KERAS_MODELS = {
  'keras_resnet50': 'ResNet50', 'keras_resnet101': 'ResNet101', 'keras_resnet152': 'ResNet152',
  'keras_resnet50v2': 'ResNet50V2', 'keras_resnet101v2': 'ResNet101V2',
  'keras_resnet152v2': 'ResNet152V2',
}


def _keras_variable(collection: str, module: str, leaf: str) -> str:
  if collection == 'batch_stats':
    return {'mean': 'moving_mean', 'var': 'moving_variance'}[leaf]
  if module.endswith('bn'):  # every BatchNormalization layer in keras.applications' ResNets
    return {'scale': 'gamma', 'bias': 'beta'}[leaf]
  return leaf  # conv / dense: 'kernel', 'bias'


def keras_model(model_name: str, weights: str | os.PathLike | None = None, **kwargs):
  """The keras.applications model for `model_name` (logits: classifier_activation=None)."""
  if model_name not in KERAS_MODELS:
    raise ValueError(f'model_name={model_name!r}: Keras models are {sorted(KERAS_MODELS)}.')
  try:
    import keras
  except ImportError as e:
    raise ImportError('Reading Keras weights needs keras: pip install "resnet_jax[keras]".') from e
  kwargs.setdefault('classifier_activation', None)
  model = getattr(keras.applications, KERAS_MODELS[model_name])(weights=None, **kwargs)
  if weights is not None:
    if not os.path.exists(weights):
      raise FileNotFoundError(f'No Keras weights file at {os.fspath(weights)!r}.')
    model.load_weights(os.fspath(weights))
  return model


def from_keras(model_or_path, model_name: str, **overrides) -> dict[str, Any]:
  """{'params', 'batch_stats'} for `model_name` (e.g. 'keras_resnet50') from Keras weights."""
  if isinstance(model_or_path, (str, os.PathLike)):
    model_or_path = keras_model(model_name, model_or_path)
  weights = {}
  for layer in model_or_path.layers:
    for var in layer.weights:
      weights[(layer.name, var.name.split('/')[-1].split(':')[0])] = np.asarray(var.numpy())
  head = weights.get(('predictions', 'kernel'))
  overrides.setdefault('num_classes', head.shape[-1] if head is not None else 1000)
  model = create_model(model_name, **overrides)
  abstract = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
  )
  out, used, problems = {}, set(), []
  for collection in ('params', 'batch_stats'):
    converted = {}
    for path, leaf in traverse_util.flatten_dict(abstract.get(collection, {})).items():
      key = (path[-2], _keras_variable(collection, path[-2], path[-1]))
      if key not in weights:
        problems.append(f'missing {"/".join(key)} (for {collection}/{"/".join(path)})')
      elif weights[key].shape != leaf.shape:
        problems.append(f'{"/".join(key)}: Keras has {weights[key].shape}, {model_name} needs '
                        f'{leaf.shape}')
      else:
        converted[path] = np.asarray(weights[key], np.float32)
        used.add(key)
    out[collection] = traverse_util.unflatten_dict(converted)
  problems += [f'unexpected {"/".join(k)} in the Keras model' for k in sorted(set(weights) - used)]
  if problems:
    shown = '\n  '.join(problems[:20])
    raise ValueError(
      f'These Keras weights do not fit {model_name!r} ({len(problems)} problems):\n  {shown}\n'
      f'Keras names map as {KERAS_MODELS}.'
    )
  return out
