"""SE-ResNet, ResNeSt, VGG, GoogLeNet, Keras ResNets: the generic model checks, small and fast.

Full-size shapes and parameter counts of every name are in test_registry.py (eval_shape only);
here each family compiles once at a small input, forward and backward, in train mode with the
trainer's exact call (`mutable=['batch_stats'], rngs={'dropout': key}`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from resnet_jax.models import create_model
from tests import fast_compile

# name -> (overrides that keep the compile small, input size)
SMALL = {
  'seresnet50': (dict(stage_sizes=(1, 1, 1, 1)), 32),
  'seresnext50_32x4d': (dict(stage_sizes=(1, 1, 1, 1)), 32),
  'resnest50': (dict(stage_sizes=(1, 1, 1, 1)), 32),
  'vgg11': ({}, 32),
  'vgg11_bn': ({}, 32),
  'googlenet': (dict(aux_logits=True), 64),
  'keras_resnet50': (dict(stage_sizes=(1, 1, 1, 1)), 32),
  'keras_resnet50v2': (dict(stage_sizes=(2, 2, 2, 2)), 64),  # V2 needs 2 blocks per stage
}


def _train_loss(model, variables, x, labels, **kwargs):
  def loss_fn(params):
    logits, updates = model.apply(
      {**variables, 'params': params}, x, train=True, mutable=['batch_stats'],
      rngs={'dropout': jax.random.key(3)}, **kwargs,
    )
    if isinstance(logits, dict):  # GoogLeNet with return_aux: main + 0.3 * each aux (paper)
      total = logits['output'], 0.3 * logits['aux1'], 0.3 * logits['aux2']
    else:
      total = (logits,)
    one_hot = jax.nn.one_hot(labels, 5)
    loss = sum(-jnp.mean(jnp.sum(one_hot * jax.nn.log_softmax(t), -1)) for t in total)
    return loss, updates

  return fast_compile.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables['params'])


@pytest.mark.parametrize('name', sorted(SMALL))
def test_forward_backward_finite_and_every_parameter_used(name):
  overrides, size = SMALL[name]
  model = create_model(name, num_classes=5, zero_init_residual=False, **overrides)
  x = jax.random.normal(jax.random.key(1), (4, size, size, 3))
  # Jitted: eager init compiles one random-number program per parameter shape (GoogLeNet: 25 s).
  variables = fast_compile.jit(functools.partial(model.init, train=False))(jax.random.key(0), x)
  kwargs = {'return_aux': True} if name == 'googlenet' else {}
  (loss, updates), grads = _train_loss(model, variables, x, jnp.arange(4) % 5, **kwargs)
  assert np.isfinite(loss)
  flat = traverse_util.flatten_dict(grads)
  assert all(np.all(np.isfinite(g)) for g in flat.values())
  dead = [p for p, g in flat.items() if not np.any(g)]
  assert not dead, dead
  if 'batch_stats' in variables:
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), variables['batch_stats'],
                         updates['batch_stats'])
    assert all(jax.tree.leaves(moved))
  else:
    assert not updates.get('batch_stats')  # VGG without BN: empty, kept by the trainer
  logits = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
  assert logits.shape == (4, 5) and logits.dtype == jnp.float32
  assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


def test_dropout_is_train_only_and_needs_an_rng():
  model = create_model('vgg11', num_classes=3)
  x = jnp.ones((2, 32, 32, 3))
  v = model.init(jax.random.key(0), x)
  np.testing.assert_array_equal(model.apply(v, x), model.apply(v, x))
  a = model.apply(v, x, train=True, rngs={'dropout': jax.random.key(1)}, mutable=['batch_stats'])
  b = model.apply(v, x, train=True, rngs={'dropout': jax.random.key(2)}, mutable=['batch_stats'])
  assert np.any(np.asarray(a[0]) != np.asarray(b[0]))
  with pytest.raises(Exception, match='dropout'):
    model.apply(v, x, train=True, mutable=['batch_stats'])
  off = create_model('vgg11', num_classes=3, dropout_rate=0.0)
  c = off.apply(v, x, train=True, mutable=['batch_stats'])[0]
  np.testing.assert_allclose(c, off.apply(v, x), rtol=1e-6)


def test_googlenet_aux_heads_are_optional_and_off_by_default():
  x = jnp.zeros((1, 64, 64, 3))
  plain = jax.eval_shape(lambda: create_model('googlenet').init(jax.random.key(0), x))
  assert 'aux1' not in plain['params']
  aux = jax.eval_shape(
    lambda: create_model('googlenet', aux_logits=True).init(jax.random.key(0), x))
  assert {'aux1', 'aux2'} <= set(aux['params'])
  with pytest.raises(ValueError, match='aux_logits'):
    jax.eval_shape(lambda: create_model('googlenet').apply(plain, x, return_aux=True))


def test_se_gates_the_residual_branch():
  v = jax.eval_shape(lambda: create_model('seresnet50').init(jax.random.key(0),
                                                           jnp.zeros((1, 32, 32, 3))))
  se = v['params']['layer4_0']['se']
  assert se['fc1']['kernel'].shape == (1, 1, 2048, 128)  # reduction 16
  assert se['fc2']['kernel'].shape == (1, 1, 128, 2048)


def test_resnest_split_attention_shapes():
  v = jax.eval_shape(lambda: create_model('resnest50').init(jax.random.key(0),
                                                          jnp.zeros((1, 32, 32, 3))))
  attn = v['params']['layer1_0']['conv2']
  assert attn['conv']['kernel'].shape == (3, 3, 32, 128)  # 64 wide, radix 2, 2 groups
  assert attn['fc1']['kernel'].shape == (1, 1, 64, 32)  # max(64 * 2 / 4, 32)
  assert attn['fc2']['kernel'].shape == (1, 1, 32, 128)
  assert v['params']['stem_conv1']['kernel'].shape == (3, 3, 3, 32)  # deep stem 32-32-64


def test_errors_name_the_field():
  with pytest.raises(TypeError, match='VGG fields'):
    create_model('vgg16', stage_sizes=(1,))
  with pytest.raises(ValueError, match='depth'):
    jax.eval_shape(create_model('vgg16', depth=12).init, jax.random.key(0),
                   jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match='se_reduction'):
    jax.eval_shape(create_model('preact_resnet18', se_reduction=16).init, jax.random.key(0),
                   jnp.zeros((1, 32, 32, 3)))
