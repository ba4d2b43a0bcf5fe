"""Every model runs: finite forward and gradients, train-mode BatchNorm, dtypes, zero-init.

Compiling the full depth of every model would take many minutes on 2 cores, so each model is
run with one block per stage: every distinct block, stem, shortcut, width and grouping is
compiled and differentiated. Full-depth forwards are compiled in tests/interop (ResNet-152).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from resnet_jax.models import ResNet, create_model, list_models, model_class, model_fields
from tests import fast_compile


def _shallow_variants():
  """One name per distinct architecture once every stage is cut to one block.

  ResNet-class models only: VGG, GoogLeNet and the Keras ResNets have no stage_sizes to cut (or
  a different graph) and get the same checks in tests/models/test_zoo.py.
  """
  seen, names = set(), []
  for name in list_models():
    if model_class(name) is not ResNet:
      continue
    fields = model_fields(name)
    fields['stage_sizes'] = (1,) * len(fields['stage_sizes'])
    key = tuple(sorted((k, str(v)) for k, v in fields.items()))
    if key not in seen:
      seen.add(key)
      names.append(name)
  return names


def _loss_and_grads(model, x, labels):
  # Jitted: eager init and apply compile one small program per operation and shape.
  variables = fast_compile.jit(functools.partial(model.init, train=False))(jax.random.key(0), x)

  def loss_fn(params):
    logits, updates = model.apply(
      {'params': params, 'batch_stats': variables['batch_stats']}, x, train=True,
      mutable=['batch_stats'],
    )
    one_hot = jax.nn.one_hot(labels, logits.shape[-1])
    return -jnp.mean(jnp.sum(one_hot * jax.nn.log_softmax(logits), -1)), updates

  (loss, updates), grads = fast_compile.jit(jax.value_and_grad(loss_fn, has_aux=True))(
    variables['params'])
  return variables, loss, grads, updates


@pytest.mark.parametrize('name', _shallow_variants())
def test_forward_and_gradients_are_finite(name):
  fields = model_fields(name)
  model = create_model(
    name, stage_sizes=(1,) * len(fields['stage_sizes']), num_classes=5,
    zero_init_residual=False,  # zero scales would give some exactly-zero gradients by design
  )
  size = 32
  x = jax.random.normal(jax.random.key(1), (4, size, size, 3))
  variables, loss, grads, updates = _loss_and_grads(model, x, jnp.arange(4) % 5)
  assert np.isfinite(loss)
  flat = traverse_util.flatten_dict(grads)
  for path, g in flat.items():
    assert np.all(np.isfinite(g)), path
  # Every parameter is used: a gradient that is exactly zero everywhere means a dead branch.
  dead = [p for p, g in flat.items() if not np.any(g)]
  assert not dead, dead
  # Train mode moves every running statistic.
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), variables['batch_stats'],
                       updates['batch_stats'])
  assert all(jax.tree.leaves(moved))
  logits = fast_compile.jit(functools.partial(model.apply, train=False))(variables, x)
  assert logits.shape == (4, 5) and np.all(np.isfinite(logits))


def test_zero_init_residual_makes_blocks_identity_at_init():
  v = create_model('resnet18').init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert not np.any(v['params']['layer1_0']['bn2']['scale'])
  assert np.all(v['params']['layer1_0']['bn1']['scale'] == 1)
  off = create_model('resnet18', zero_init_residual=False).init(
    jax.random.key(0), jnp.zeros((1, 32, 32, 3))
  )
  assert np.all(off['params']['layer1_0']['bn2']['scale'] == 1)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = create_model('resnet_tiny', dtype=jnp.bfloat16)
  x = jnp.ones((2, 16, 16, 3))
  v = model.init(jax.random.key(0), x)
  assert {a.dtype for a in jax.tree.leaves(v)} == {jnp.dtype(jnp.float32)}
  logits, updates = model.apply(v, x, train=True, mutable=['batch_stats'])
  assert logits.dtype == jnp.float32
  assert {a.dtype for a in jax.tree.leaves(updates)} == {jnp.dtype(jnp.float32)}
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  low = np.asarray(model.apply(v, x))
  ref = np.asarray(create_model('resnet_tiny').apply(v, x))
  # bf16 keeps 8 mantissa bits: close to float32, but not equal (so it really ran in bf16).
  assert 0 < np.abs(low - ref).max() < 0.05 * np.abs(ref).max() + 1e-2


def test_grayscale_input_and_odd_sizes():
  for name, size in [('resnet50d', 33), ('cifar_resnet20', 28), ('resnet18', 37)]:
    fields = model_fields(name)
    model = create_model(name, stage_sizes=(1,) * len(fields['stage_sizes']), num_classes=3)
    x = jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32)
    v = jax.eval_shape(model.init, jax.random.key(0), x)  # Shapes only: nothing to compute.
    assert jax.eval_shape(model.apply, v, x).shape == (1, 3)


def test_init_matches_torchvision_statistics():
  # Kaiming-normal fan_out for convolutions: std = sqrt(2 / (k*k*out)).
  v = create_model('resnet50').init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  k = np.asarray(v['params']['layer3_0']['conv2']['kernel'])  # 3x3, 256 -> 256
  assert np.std(k) == pytest.approx(np.sqrt(2 / (9 * 256)), rel=0.02)
  fc = np.asarray(v['params']['fc']['kernel'])  # U(-1/sqrt(2048), 1/sqrt(2048))
  assert np.abs(fc).max() <= 1 / np.sqrt(2048)
  assert np.abs(fc).max() > 0.95 / np.sqrt(2048)
