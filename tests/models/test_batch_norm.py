"""Our BatchNorm equals flax's: variables, outputs, running statistics and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.models.batch_norm import BatchNorm, _normalise, _stats, batch_norm_train


def _rel_err(a, b):
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-12))


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('train', [True, False])
def test_equals_flax_batch_norm(dtype, train):
  x = (jax.random.normal(jax.random.key(0), (6, 5, 7, 8)) * 3 + 1).astype(dtype)
  kwargs = dict(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                scale_init=nn.initializers.normal(1.0), bias_init=nn.initializers.normal(1.0))
  ref, ours = nn.BatchNorm(**kwargs), BatchNorm(**kwargs)
  v = ref.init(jax.random.key(1), x)
  # Same variable tree and initial values: checkpoints and weight conversion are unchanged.
  jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.key(1), x), v)
  v = {**v, 'batch_stats': {'mean': jnp.arange(8.0) / 8, 'var': jnp.arange(1.0, 9.0)}}
  g = jax.random.normal(jax.random.key(2), x.shape)

  def run(model):
    def loss(params, x):
      y, upd = model.apply({**v, 'params': params}, x, mutable=['batch_stats'])
      return jnp.sum(y.astype(jnp.float32) * g), (y, upd)
    return jax.grad(loss, argnums=(0, 1), has_aux=True)(v['params'], x)

  (grads_ref, (y_ref, upd_ref)), (grads, (y, upd)) = run(ref), run(ours)
  assert y.dtype == y_ref.dtype
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
  jax.tree.map(np.testing.assert_array_equal, upd, upd_ref)
  # bf16: the input gradient is rounded to bf16 either way, from differently ordered sums.
  tol = 1e-5 if dtype == jnp.float32 else 1e-2
  errs = jax.tree.map(_rel_err, grads, grads_ref)
  assert max(jax.tree.leaves(errs)) <= tol, errs


def test_gradients_through_the_batch_statistics_equal_autodiff():
  # The running averages are never differentiated in training, but the rule must stay right
  # if someone does: the mean/var cotangents fold into the input gradient.
  x = jax.random.normal(jax.random.key(0), (4, 3, 3, 5)) * 2 + 0.5
  scale, bias = jnp.linspace(0.5, 2.0, 5), jnp.linspace(-1.0, 1.0, 5)
  w = jax.random.normal(jax.random.key(1), x.shape)

  def reference(x, scale, bias):
    mean, var = _stats(x)
    return _normalise(x, mean, var, scale, bias, 1e-5), mean, var

  def loss(fn):
    def f(x, scale, bias):
      y, mean, var = fn(x, scale, bias)
      return jnp.sum(y * w) + 3.0 * jnp.sum(mean) - 2.0 * jnp.sum(var * scale)
    return jax.grad(f, argnums=(0, 1, 2))(x, scale, bias)

  ours = loss(lambda x, s, b: batch_norm_train(x, s, b, 1e-5))
  for got, want in zip(ours, loss(reference)):
    assert _rel_err(got, want) <= 1e-5


def test_input_gradient_sums_to_zero_per_channel():
  # A property of normalisation: shifting a channel's inputs changes nothing, so the input
  # gradient is orthogonal to constants (and to the normalised input itself).
  x = jax.random.normal(jax.random.key(0), (8, 4, 4, 3))
  g = jax.random.normal(jax.random.key(1), x.shape)
  dx = jax.vjp(lambda x: batch_norm_train(x, jnp.ones(3), jnp.zeros(3), 1e-5)[0], x)[1](g)[0]
  np.testing.assert_allclose(jnp.sum(dx, (0, 1, 2)), 0.0, atol=1e-4)
