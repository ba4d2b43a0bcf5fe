"""Convolution with a choice of lowering; parameters identical whichever lowering runs.

XLA:CPU runs 1x1 convolutions (two thirds of a bottleneck's layers) well below its matmul
rate, forward and above all backward; written as a matmul over channels they run at matmul
speed (measured by `python -m resnet_jax.bench train`, numbers in README). GPUs and TPUs have
native convolution kernels for which the rewrite buys nothing, hence a per-platform default.

Inside a loop body (`scan_blocks=True`), XLA:CPU leaves the two gradient convolutions JAX
derives for a 3x3 convolution in their non-canonical dimension orders (kernel gradient:
batch and feature roles swapped; input gradient: kernel as 'oi') and runs them with its naive
convolution loop, 10-50x slower than its convolution library; outside loops it transposes them
itself. `conv_impl='cpu'` writes both gradients as canonical NHWC/HWIO convolutions with
explicit transposes: the same arithmetic (bit-identical gradients, tested), scanned ResNet-50
then runs within 4-15% of the unrolled speed (0.22x before).

The parameter is the same `kernel` of shape (1, 1, in, out) in every lowering, so checkpoints,
torchvision conversion and the summary do not depend on the choice.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

# xla:      lax.conv_general_dilated everywhere (nn.Conv).
# matmul:   1x1 convolutions as channel matmuls (a strided 1x1 slices first); others as xla.
# cpu:      matmul, and stride-1 kxk convolutions with canonical-layout gradient convolutions.
# auto:     cpu on CPU, xla on GPU/TPU.
CONV_IMPLS = ('auto', 'xla', 'matmul', 'cpu')
_CANONICAL = ('NHWC', 'HWIO', 'NHWC')


def resolve_conv_impl(impl: str) -> str:
  """'auto' -> the lowering measured fastest for the default backend."""
  if impl not in CONV_IMPLS:
    raise ValueError(f'conv_impl={impl!r}: expected one of {CONV_IMPLS}.')
  if impl == 'auto':
    return 'cpu' if jax.default_backend() == 'cpu' else 'xla'
  return impl


def _conv(x: jax.Array, kernel: jax.Array, padding, precision=None) -> jax.Array:
  return jax.lax.conv_general_dilated(
    x, kernel, (1, 1), padding, dimension_numbers=_CANONICAL, precision=precision
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_canonical_grads(x: jax.Array, kernel: jax.Array, padding, precision=None) -> jax.Array:
  """Stride-1 NHWC/HWIO convolution whose gradients are canonical convolutions too.

  `padding` is ((top, bottom), (left, right)). Values and gradients equal
  `lax.conv_general_dilated`'s; only the dimension orders XLA sees in the backward pass differ.
  """
  return _conv(x, kernel, padding, precision)


def _conv_fwd(x, kernel, padding, precision):
  return _conv(x, kernel, padding, precision), (x, kernel)


def _conv_bwd(padding, precision, residuals, grad):
  x, kernel = residuals
  # Input gradient: the output gradient convolved with the kernel flipped in space and with
  # in/out swapped (a small transpose of the kernel, not of activations); padding k-1-p.
  flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))
  pad_t = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel.shape[:2], padding))
  grad_x = _conv(grad, flipped, pad_t, precision)
  # Kernel gradient: a convolution of the input, channels as the batch ([Cin, H, W, N]), with
  # the output gradient as the kernel ([Ho, Wo, N, Cout]); the output [Cin, kh, kw, Cout] holds
  # the kernel gradient, which a transpose puts back in HWIO.
  grad_k = _conv(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(grad, (1, 2, 0, 3)), padding,
                 precision)
  return grad_x, jnp.transpose(grad_k, (1, 2, 0, 3)).astype(kernel.dtype)


conv_canonical_grads.defvjp(_conv_fwd, _conv_bwd)


def _explicit_padding(padding):
  """((lo, hi), (lo, hi)) for an int or pair-of-pairs padding, None for anything else."""
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  if (isinstance(padding, (tuple, list)) and len(padding) == 2
      and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in padding)):
    return tuple((int(lo), int(hi)) for lo, hi in padding)
  return None


class Conv(nn.Conv):
  """nn.Conv with `impl` choosing how convolutions are lowered (see CONV_IMPLS)."""

  impl: str = 'xla'

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    impl = resolve_conv_impl(self.impl)
    plain = (
      self.feature_group_count == 1 and self.input_dilation in (None, 1, (1, 1))
      and self.kernel_dilation in (None, 1, (1, 1)) and len(self.kernel_size) == 2
    )
    is_pointwise = plain and tuple(self.kernel_size) == (1, 1) and self.padding in (
      'SAME', 'VALID', 0, ((0, 0), (0, 0)))
    if impl in ('matmul', 'cpu') and is_pointwise:
      return self._pointwise(inputs)
    padding = _explicit_padding(self.padding)
    if (impl == 'cpu' and plain and padding is not None and self.strides in (None, 1, (1, 1))
        and not self.use_bias):
      return self._canonical_grads(inputs, padding)
    return super().__call__(inputs)

  def _canonical_grads(self, inputs: jax.Array, padding) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init,
                        (*self.kernel_size, inputs.shape[-1], self.features), self.param_dtype)
    inputs, kernel = self.promote_dtype(inputs, kernel, dtype=self.dtype)
    return conv_canonical_grads(inputs, kernel, padding, self.precision)

  def _pointwise(self, inputs: jax.Array) -> jax.Array:
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
