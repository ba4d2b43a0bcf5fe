"""keras.applications ResNets (JAX backend): logit parity and the parameter counts Keras prints."""

import os

os.environ.setdefault('KERAS_BACKEND', 'jax')

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip('keras')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from resnet_jax.interop.keras import from_keras, keras_model  # noqa: E402
from resnet_jax.models import create_model  # noqa: E402

pytestmark = pytest.mark.keras
SIZE = 64  # weights=None allows any input >= 32; parameter shapes do not depend on it


def _randomised(name, x):
  net = keras_model(name, input_shape=(SIZE, SIZE, 3))
  rng = np.random.default_rng(0)
  bns = [layer for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization)]
  # Non-trivial BN affine parts and statistics calibrated on a batch (momentum 0: the moving
  # averages become the batch's), as tests/interop/test_torchvision.py does and for its reasons.
  for layer in bns:
    gamma, beta, mean, var = layer.get_weights()
    small = layer.name.endswith('_3_bn')  # residual branches small against the identity
    gamma = rng.uniform(0.1, 0.3, gamma.shape) if small else rng.uniform(0.5, 1.5, gamma.shape)
    layer.set_weights([gamma, rng.uniform(-0.2, 0.2, beta.shape), mean, var])
    layer.momentum = 0.0
  net(x, training=True)
  for layer in bns:
    gamma, beta, mean, var = layer.get_weights()
    layer.set_weights([gamma, beta, mean, np.maximum(var, 0.1)])
  return net


@pytest.mark.parametrize('name', ['keras_resnet50', 'keras_resnet50v2'])
def test_logits_match_keras(name):
  x = np.random.default_rng(1).standard_normal((2, SIZE, SIZE, 3)).astype(np.float32)
  net = _randomised(name, x)
  ref = np.asarray(net(x, training=False))
  variables = from_keras(net, name)
  ours = jax.jit(lambda v, x: create_model(name).apply(v, x))(variables, jnp.asarray(x))
  err = np.abs(np.asarray(ours) - ref).max()
  print(f'{name}: max abs logit error {err:.2e} (logits up to {np.abs(ref).max():.2f})')
  assert err <= 1e-4, err


@pytest.mark.parametrize('name, keras_count', [('keras_resnet50', 25_636_712),
                                               ('keras_resnet50v2', 25_613_800)])
def test_counts_equal_keras(name, keras_count):
  # Keras counts BN moving statistics as (non-trainable) parameters; we keep them in batch_stats.
  net = keras_model(name)
  assert net.count_params() == keras_count
  variables = from_keras(net, name)
  ours = sum(np.size(a) for a in jax.tree.leaves(variables))
  assert ours == keras_count
  assert sum(np.size(a) for a in jax.tree.leaves(variables['params'])) == sum(
    np.size(w) for w in net.trainable_weights)


def test_weights_file_round_trip(tmp_path):
  net = keras_model('keras_resnet50', input_shape=(SIZE, SIZE, 3))
  path = tmp_path / 'r50.weights.h5'
  net.save_weights(path)
  a = from_keras(path, 'keras_resnet50')
  b = from_keras(net, 'keras_resnet50')
  jax.tree.map(np.testing.assert_array_equal, a, b)
