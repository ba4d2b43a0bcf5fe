"""Convolution with a choice of lowering; parameters identical whichever lowering runs.

XLA:CPU runs 1x1 convolutions (two thirds of a bottleneck's layers) well below its matmul
rate, forward and above all backward; written as a matmul over channels they run at matmul
speed (measured by `python -m resnet_jax.bench train`, numbers in README). GPUs and TPUs have
native convolution kernels for which the rewrite buys nothing, hence a per-platform default.

The parameter is the same `kernel` of shape (1, 1, in, out) in every lowering, so checkpoints,
torchvision conversion and the summary do not depend on the choice.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

# xla:      lax.conv_general_dilated everywhere (nn.Conv).
# matmul:   1x1 convolutions as channel matmuls (a strided 1x1 slices first); others as xla.
# auto:     matmul on CPU, xla on GPU/TPU.
CONV_IMPLS = ('auto', 'xla', 'matmul')


def resolve_conv_impl(impl: str) -> str:
  """'auto' -> the lowering measured fastest for the default backend."""
  if impl not in CONV_IMPLS:
    raise ValueError(f'conv_impl={impl!r}: expected one of {CONV_IMPLS}.')
  if impl == 'auto':
    return 'matmul' if jax.default_backend() == 'cpu' else 'xla'
  return impl


class Conv(nn.Conv):
  """nn.Conv with `impl` choosing how 1x1 convolutions are lowered."""

  impl: str = 'xla'

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    is_pointwise = (
      tuple(self.kernel_size) == (1, 1) and self.feature_group_count == 1
      and self.padding in ('SAME', 'VALID', 0, ((0, 0), (0, 0)))
      and self.input_dilation in (None, 1, (1, 1))
      and self.kernel_dilation in (None, 1, (1, 1))
    )
    if resolve_conv_impl(self.impl) != 'matmul' or not is_pointwise:
      return super().__call__(inputs)
    strides = self.strides or (1, 1)
    strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
    # Same name, shape and initialiser as nn.Conv's, so both lowerings share one checkpoint.
    kernel = self.param(
      'kernel', self.kernel_init, (1, 1, inputs.shape[-1], self.features), self.param_dtype
    )
    if strides != (1, 1):
      # A strided 1x1 convolution reads every s-th pixel: slice, then a stride-1 matmul.
      inputs = inputs[:, :: strides[0], :: strides[1], :]
    bias = (self.param('bias', self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    y = jax.lax.dot_general(
      inputs, kernel[0, 0], (((inputs.ndim - 1,), (0,)), ((), ())), precision=self.precision
    )
    if bias is not None:
      y = y + bias
    return y


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """torch's MaxPool2d(3, stride=2, padding=1) as the maximum of nine strided slices.

  Same values as `nn.max_pool` (padding is -inf, so it never wins). XLA:CPU differentiates
  reduce_window max by tracking argmax indices (four int32 iotas of the padded input); the
  slices differentiate to cheap element-wise selects. A tie sends the gradient to every tied
  input instead of one; after ReLU ties happen at 0, where ReLU's own gradient is 0 anyway.
  """
  n, h, w, c = x.shape
  ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  out = None
  for i in range(3):
    for j in range(3):
      window = padded[:, i : i + 2 * ho - 1 : 2, j : j + 2 * wo - 1 : 2, :]
      out = window if out is None else jnp.maximum(out, window)
  return out
