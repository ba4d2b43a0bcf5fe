"""BatchNorm with flax's parameters, statistics and numerics, and a hand-written backward pass.

Same variables as `nn.BatchNorm` ('params': scale, bias; 'batch_stats': mean, var), same
forward arithmetic (float32 statistics with E[x^2] - E[x]^2 clipped at 0, running averages
with flax's momentum convention), so checkpoints and torchvision conversion do not change.

Why a custom VJP: autodiff of the normalisation produces the scale and bias gradients
(per-channel sums over activations) as separate reductions from the input gradient. XLA:CPU's
scheduler defers those reductions to the end of the step, where the optimiser consumes them,
and keeps two activation-sized cotangents per BatchNorm alive until then — which defeated
rematerialisation (`remat=True` used more memory than no remat). Here the input gradient is
written in terms of the two sums,

    dx = r * scale * (g - sum(g) / N - xhat * sum(g * xhat) / N),   r = 1 / sqrt(var + eps)

so the parameter gradients exist as soon as the input gradient does, and the activations
they read are freed at once. Gradients equal autodiff's to float32 rounding (tested).
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


def _stats(x: jax.Array):
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  # flax's fast variance: one pass, clipped at 0 against round-off.
  var = jnp.maximum(0.0, jnp.mean(jnp.square(x), axes) - jnp.square(mean))
  return mean, var


def _normalise(x, mean, var, scale, bias, epsilon):
  # flax's order of operations, so outputs match nn.BatchNorm bit for bit.
  return (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float):
  """Training-mode normalisation of float32 `x` over all but the last axis.

  Returns (y, batch mean, batch variance); the statistics feed the running averages.
  """
  mean, var = _stats(x)
  return _normalise(x, mean, var, scale, bias, epsilon), mean, var


@batch_norm_train.defjvp
def _jvp(epsilon, primals, tangents):
  x, scale, bias = primals
  dx, dscale, dbias = tangents
  mean, var = _stats(x)
  y = _normalise(x, mean, var, scale, bias, epsilon)
  axes = tuple(range(x.ndim - 1))
  r = jax.lax.rsqrt(var + epsilon)
  x_hat = (x - mean) * r
  a = r * scale
  dmean = jnp.mean(dx, axes)
  dx_hat_mean = jnp.mean(dx * x_hat, axes)
  # Grouped so that the transpose (the backward pass) reduces exactly sum(g) and
  # sum(g * x_hat): the bias and scale gradients, shared with the input gradient.
  dy = a * dx + x_hat * (dscale - a * dx_hat_mean) + (dbias - a * dmean)
  # The statistics' tangents (d mean = mean(dx), d var = 2 mean(dx * x_hat) / r).
  return (y, mean, var), (dy, dmean, 2.0 * dx_hat_mean / r)


class BatchNorm(nn.Module):
  """Drop-in for `nn.BatchNorm(axis=-1)` as the networks here use it (no axis_name, no mask)."""

  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  scale_init: Initializer = nn.initializers.ones
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
    scale = self.param('scale', self.scale_init, (features,), self.param_dtype)
    bias = self.param('bias', self.bias_init, (features,), self.param_dtype)
    out_dtype = self.dtype or jnp.result_type(x, scale)
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    scale32, bias32 = scale.astype(x32.dtype), bias.astype(x32.dtype)
    if self.use_running_average:
      y = _normalise(x32, ra_mean.value, ra_var.value, scale32, bias32, self.epsilon)
      return y.astype(out_dtype)
    y, mean, var = batch_norm_train(x32, scale32, bias32, self.epsilon)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y.astype(out_dtype)
