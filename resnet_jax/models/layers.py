"""Convolution with a choice of lowering; parameters identical whichever lowering runs.

XLA:CPU runs 1x1 convolutions (two thirds of a bottleneck's layers) well below its matmul
rate, forward and above all backward; written as a matmul over channels they run at matmul
speed (measured by `python -m resnet_jax.bench train`, numbers in docs/performance.md). GPUs
and TPUs have native convolution kernels for which the rewrite buys nothing, hence a
per-platform default.

Inside a loop body (`scan_blocks=True`), XLA:CPU leaves the two gradient convolutions JAX
derives for a 3x3 convolution in their non-canonical dimension orders (kernel gradient:
batch and feature roles swapped; input gradient: kernel as 'oi') and runs them with its naive
convolution loop, 10-50x slower than its convolution library; outside loops it transposes them
itself. `conv_impl='cpu'` writes both gradients as canonical NHWC/HWIO convolutions with
explicit transposes: the same arithmetic (bit-identical gradients, tested), scanned ResNet-50
then runs within 4-15% of the unrolled speed (0.22x before).

Both CPU lowerings make the transposing copies their kernel gradients need behind a
conditional (`_opaque`), where XLA cannot fuse — and recompute — the elementwise producers into
them: ResNet-50's step 1.34x, ResNet-152 1.18x (docs/performance.md,
bench/results/opaque_transposes.json).

The parameter is the same `kernel` of shape (1, 1, in, out) in every lowering, so checkpoints,
torchvision conversion and the summary do not depend on the choice.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import onednn_conv

# xla:      lax.conv_general_dilated everywhere (nn.Conv).
# matmul:   1x1 convolutions as channel matmuls (a strided 1x1 slices first); others as xla.
# cpu:      matmul, and stride-1 kxk convolutions with canonical-layout gradient convolutions.
# onednn:   float32 and bfloat16 (on CPUs with bf16 instructions) kxk convolutions (any stride)
#           on oneDNN; 1x1 ones in bfloat16 on oneDNN too, in float32 as matmuls whose kernel
#           gradient is oneDNN's (onednn_conv.py); other convolutions, and all where oneDNN is
#           not available on the host, as cpu; xla on GPU/TPU (oneDNN's kernels are CPU code),
#           so a CPU recipe that asks for it runs unchanged on an accelerator.
# auto:     cpu on CPU (onednn for bfloat16 compute where oneDNN is available: XLA:CPU has no
#           bf16 convolution kernels), xla on GPU/TPU.
CONV_IMPLS = ('auto', 'xla', 'matmul', 'cpu', 'onednn')
_CANONICAL = ('NHWC', 'HWIO', 'NHWC')


def is_cpu_lowering(impl: str) -> bool:
  """Whether `impl` resolves to a CPU lowering ('cpu' or 'onednn'), under which the models
  apply their XLA:CPU fusion fixes (stored outputs, stored pool positions, in-order remat)."""
  return resolve_conv_impl(impl) in ('cpu', 'onednn')


def resolve_conv_impl(impl: str, dtype=None) -> str:
  """'auto' -> the lowering measured fastest for the default backend and compute `dtype`.

  On CPU, bfloat16 compute goes to oneDNN where its handlers are available and the CPU has bf16
  instructions (onednn_conv.available): XLA:CPU's bf16 convolutions ran ResNet-50 at
  0.92-0.98x its float32 step, oneDNN's bf16 ones at 1.72x (docs/performance.md). Float32
  stays on 'cpu' (oneDNN's gain there is 1.05-1.36x at +12-56% planned memory: opt-in).
  """
  if impl not in CONV_IMPLS:
    raise ValueError(f'conv_impl={impl!r}: expected one of {CONV_IMPLS}.')
  on_cpu = jax.default_backend() == 'cpu'
  if impl == 'auto':
    if not on_cpu:
      return 'xla'
    bf16 = dtype is not None and jnp.dtype(dtype) == jnp.bfloat16
    return 'onednn' if bf16 and onednn_conv.available(jnp.bfloat16) else 'cpu'
  if impl == 'onednn' and not on_cpu:
    return 'xla'
  return impl


def _conv(x: jax.Array, kernel: jax.Array, padding, precision=None) -> jax.Array:
  return jax.lax.conv_general_dilated(
    x, kernel, (1, 1), padding, dimension_numbers=_CANONICAL, precision=precision
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_canonical_grads(x: jax.Array, kernel: jax.Array, padding, precision=None,
                         opaque_copies: bool = True) -> jax.Array:
  """Stride-1 NHWC/HWIO convolution whose gradients are canonical convolutions too.

  `padding` is ((top, bottom), (left, right)). Values and gradients equal
  `lax.conv_general_dilated`'s; only the dimension orders XLA sees in the backward pass differ.
  """
  return _conv(x, kernel, padding, precision)


def _conv_fwd(x, kernel, padding, precision, opaque_copies):
  return _conv(x, kernel, padding, precision), (x, kernel)


def _kernel_grad_operands(x, grad):
  return jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(grad, (1, 2, 0, 3))


def _conv_bwd(padding, precision, opaque_copies, residuals, grad):
  x, kernel = residuals
  # Input gradient: the output gradient convolved with the kernel flipped in space and with
  # in/out swapped (a small transpose of the kernel, not of activations); padding k-1-p.
  flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))
  pad_t = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel.shape[:2], padding))
  grad_x = _conv(grad, flipped, pad_t, precision)
  # Kernel gradient: a convolution of the input, channels as the batch ([Cin, H, W, N]), with
  # the output gradient as the kernel ([Ho, Wo, N, Cout]); the output [Cin, kh, kw, Cout] holds
  # the kernel gradient, which a transpose puts back in HWIO.
  x_t, grad_t = _opaque(_kernel_grad_operands, opaque_copies, kernel, _after(x, grad_x), grad)
  grad_k = _conv(x_t, grad_t, padding, precision)
  return grad_x, jnp.transpose(grad_k, (1, 2, 0, 3)).astype(kernel.dtype)


conv_canonical_grads.defvjp(_conv_fwd, _conv_bwd)


def exact_zero(v: jax.Array) -> jax.Array:
  """0 with `v`'s shape that reads `v`: an ordering tie XLA cannot fold away. Non-finite
  elements count as 0, so adding it changes no value, NaN or inf."""
  return 0.0 * jnp.where(jnp.isfinite(v), v, 0.0)


def _after(x: jax.Array, grad_x: jax.Array) -> jax.Array:
  """`x` + 0 * (one element of the input gradient per example): the kernel gradient waits for it.

  The train step donates the parameters, so each kernel is updated in place, and XLA copies
  every parameter it cannot prove is read for the last time before its update. The input
  gradient reads the kernel but was no ancestor of the kernel's gradient, so XLA:CPU copied
  every kernel at the start of a one-device step (ResNet-50: 102 MB of copies, 21 MB now).
  Peak memory (`bench train`, docs/performance.md): ResNet-50 b16 -6.6% on one device, -5.3%
  on two; WRN-16-2 b128@28 -28% on two; speed unchanged within noise. Taken per example,
  g[:, 0, ..., 0], so on a batch-sharded mesh each device reads only its own examples (a
  scalar of a sharded array would be an all-reduce). Non-finite elements count as 0, so the
  zero is exact and the kernel gradient has autodiff's values, NaNs included (tested); XLA
  cannot fold it away.
  """
  g = jax.lax.stop_gradient(grad_x)[(slice(None),) + (0,) * (grad_x.ndim - 1)]
  zero = exact_zero(g)
  return x + zero.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)


def _matmul(x, kernel, precision):
  return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


def _opaque(fn, enabled: bool, tie: jax.Array, *args):
  """fn(*args) computed behind a conditional whose two branches are both fn (if `enabled`).

  XLA:CPU fuses elementwise producers into a transposing copy and recomputes them there, in
  the copy's order: the BatchNorm backward, or a whole stage's chain of residual additions
  for the input of a 1x1 convolution's kernel gradient, written at ~0.5 GB/s (ResNet-50: ~40%
  of its train step). A branch boundary is a fusion boundary, so the operands arrive as
  materialised arrays and the copy is only a copy. Optimisation barriers do not do this here
  (XLA:CPU drops them). Both branches are the same function, so the value never depends on
  the predicate; it is data-dependent so the conditional is not folded away.

  The predicate reads `tie`, the convolution's kernel: a parameter, replicated on every
  device, so reading it needs no communication. (Read from the batch-sharded activations, it
  took a scalar all-reduce per convolution, which XLA's all-reduce combiner merged with the
  step's later gradient all-reduces: each kernel gradient then waited for them with its
  operands live — ResNet-50 b16 on two devices: +31% peak memory, and all of remat's saving.)
  """
  if not enabled:
    return fn(*args)
  return jax.lax.cond(finite_first_element(tie), fn, fn, *args)


def finite_first_element(tie: jax.Array) -> jax.Array:
  """A data-dependent predicate that XLA cannot fold, read from a replicated parameter.

  Conditionals used as fusion boundaries (_opaque, stored) need a predicate; read
  from a parameter, replicated on every device, it costs no communication.
  """
  return jnp.isfinite(jax.lax.stop_gradient(tie).reshape(-1)[0])


def stored(y: jax.Array, tie: jax.Array) -> jax.Array:
  """`y` returned from behind a conditional: a fusion boundary, so it is stored as one array.

  XLA:CPU fuses a residual block's last elementwise ops (BatchNorm, the residual addition,
  ReLU) into every consumer of the block's output, the next block's own addition among them,
  and recomputes them there; repeated block after block, one fusion recomputes a stage's whole
  chain of additions (28 operands at ResNet-152's layer3_35, ~20 ms where a stored output
  takes ~1 ms). The predicate reads `tie`, a parameter (finite_first_element: no
  communication). The taken branch returns `y` itself; the other, taken only when that
  parameter is not finite (and with it the output), returns NaNs. Two identical branches would
  not do: JAX passes an output that every branch forwards around the conditional, and the
  boundary with it.
  """
  return jax.lax.cond(finite_first_element(tie), lambda a: a,
                      lambda a: a * jnp.asarray(jnp.nan, a.dtype), y)


def _channels_major(x: jax.Array) -> jax.Array:
  return jnp.moveaxis(x, -1, 0).reshape(x.shape[-1], -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def pointwise_matmul(x: jax.Array, kernel: jax.Array, precision=None,
                     opaque_copies: bool = True) -> jax.Array:
  """x @ kernel over the channel axis, whose kernel gradient reads x through `_opaque`.

  Values and gradients are autodiff's (the same products and sums; tested).
  """
  return _matmul(x, kernel, precision)


def _pointwise_fwd(x, kernel, precision, opaque_copies):
  return _matmul(x, kernel, precision), (x, kernel)


def _pointwise_bwd(precision, opaque_copies, residuals, grad):
  x, kernel = residuals
  grad_x = _matmul(grad, kernel.T, precision)
  x_t = _opaque(_channels_major, opaque_copies, kernel, _after(x, grad_x))
  grad_k = jax.lax.dot_general(x_t, grad.reshape(-1, grad.shape[-1]), (((1,), (0,)), ((), ())),
                               precision=precision)
  return grad_x, grad_k.astype(kernel.dtype)


pointwise_matmul.defvjp(_pointwise_fwd, _pointwise_bwd)


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
  opaque_copies: bool = True  # Kernel-gradient copies outside fusions (see _opaque).

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    # oneDNN's handlers take float32 or bfloat16 NHWC arrays (onednn_conv.py); else the cpu
    # lowering.
    compute = jnp.dtype(self.dtype or jnp.result_type(inputs.dtype, self.param_dtype))
    impl = resolve_conv_impl(self.impl, compute)
    plain = (
      self.feature_group_count == 1 and self.input_dilation in (None, 1, (1, 1))
      and self.kernel_dilation in (None, 1, (1, 1)) and len(self.kernel_size) == 2
    )
    is_pointwise = plain and tuple(self.kernel_size) == (1, 1) and self.padding in (
      'SAME', 'VALID', 0, ((0, 0), (0, 0)))
    on_onednn = (impl == 'onednn' and inputs.ndim == 4
                 and compute in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
                 and onednn_conv.available(compute))
    if impl in ('matmul', 'cpu', 'onednn') and is_pointwise:
      return self._pointwise(inputs, on_onednn, compute)
    padding = _explicit_padding(self.padding)
    if impl == 'onednn':
      if on_onednn and plain and padding is not None and not self.use_bias:
        return self._onednn(inputs, padding)
      impl = 'cpu'
    if (impl == 'cpu' and plain and padding is not None and self.strides in (None, 1, (1, 1))
        and not self.use_bias):
      return self._canonical_grads(inputs, padding)
    return super().__call__(inputs)

  def _onednn(self, inputs: jax.Array, padding) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init,
                        (*self.kernel_size, inputs.shape[-1], self.features), self.param_dtype)
    # The kernel goes in as the parameter: oneDNN rounds it to the compute dtype itself and
    # returns its gradient unrounded (onednn_conv.conv).
    inputs, _ = self.promote_dtype(inputs, kernel, dtype=self.dtype)
    strides = self.strides or (1, 1)
    strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
    return onednn_conv.convolve(inputs, kernel, strides, padding)

  def _canonical_grads(self, inputs: jax.Array, padding) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init,
                        (*self.kernel_size, inputs.shape[-1], self.features), self.param_dtype)
    inputs, kernel = self.promote_dtype(inputs, kernel, dtype=self.dtype)
    return conv_canonical_grads(inputs, kernel, padding, self.precision, self.opaque_copies)

  def _pointwise(self, inputs: jax.Array, on_onednn: bool, compute) -> jax.Array:
    strides = self.strides or (1, 1)
    strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
    # Same name, shape and initialiser as nn.Conv's, so both lowerings share one checkpoint.
    kernel = self.param(
      'kernel', self.kernel_init, (1, 1, inputs.shape[-1], self.features), self.param_dtype
    )
    bias = (self.param('bias', self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    if on_onednn and compute == jnp.dtype(jnp.bfloat16):
      # bfloat16: all three products on oneDNN's 1x1 convolution, strided or not, which reads
      # and writes bf16 directly; a bf16 matmul on YNNPACK only runs fast with float32 results,
      # then rounded in a pass of its own. ResNet-50 b16 1.06x (median of 5 rounds; bench/
      # results/onednn_bf16_pointwise_resnet50_b16_2026-12-08.json). Float32 stays on matmuls.
      y = onednn_conv.convolve(inputs.astype(compute), kernel, strides, ((0, 0), (0, 0)))
    else:
      if strides != (1, 1):
        # A strided 1x1 convolution reads every s-th pixel: slice, then a stride-1 matmul.
        inputs = inputs[:, :: strides[0], :: strides[1], :]
      parameter = kernel
      inputs, kernel = self.promote_dtype(inputs, kernel, dtype=self.dtype)
      if on_onednn:  # Its kernel gradient on oneDNN, from the parameter (onednn_conv.pointwise).
        y = onednn_conv.convolve_pointwise(inputs, parameter[0, 0])
      else:
        y = pointwise_matmul(inputs, kernel[0, 0], self.precision, self.opaque_copies)
    if bias is not None:
      y = y + bias.astype(y.dtype)
    return y


def _pool_windows(x: jax.Array) -> list[jax.Array]:
  """The nine stride-2 windows of `x` padded by one -inf pixel, in window (row-major) order."""
  n, h, w, c = x.shape
  ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  return [padded[:, i : i + 2 * ho - 1 : 2, j : j + 2 * wo - 1 : 2, :]
          for i in range(3) for j in range(3)]


@jax.custom_vjp
def max_pool_3x3_s2(x: jax.Array, tie: jax.Array | None = None) -> jax.Array:
  """torch's MaxPool2d(3, stride=2, padding=1): the maximum of nine strided slices.

  Same values as `nn.max_pool` (padding is -inf, so it never wins). The gradient goes where
  torch's goes: to the first maximum of each window in row-major order (NaN wins, as it
  propagates), so gradients equal torchvision's even on ties. The forward pass records that
  position as an int8 per output, and the backward pass reads only it and the output gradient:
  XLA:CPU differentiates reduce_window max through four int32 iotas of the padded input, and
  the plain derivative of the slices compared the input with the output, which fused the
  stem's BatchNorm and ReLU into the backward pass and recomputed them there nine times (the
  slowest op of a ResNet-18 b32 step, 0.21 s of 2.7 s on one device: `bench profile`).

  `tie`, a replicated parameter (the stem convolution's kernel), puts the forward pass behind
  a conditional (`_opaque`) so that the int8 positions are stored: without it XLA:CPU fused
  their nine-way comparison chain into the backward pass's scatter, once for each of the nine
  windows an input pixel belongs to (ResNet-18 b32: again the slowest op of the step).
  """
  out = None  # Without gradients (evaluation) only the maxima: no positions, no conditional.
  for window in _pool_windows(x):
    out = window if out is None else jnp.maximum(out, window)
  return out


def _max_and_first(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The pooled maximum and the int8 position (0..8) of each window's first maximum."""
  windows = _pool_windows(x)
  out, first = windows[0], jnp.zeros(windows[0].shape, jnp.int8)
  for k, window in enumerate(windows[1:], 1):
    later_wins = (window > out) | jnp.isnan(window)  # Ties keep the earlier position.
    out = jnp.where(later_wins, window, out)
    first = jnp.where(later_wins, jnp.int8(k), first)
  return out, first


def _max_pool_fwd(x, tie):
  out, first = _opaque(_max_and_first, tie is not None, tie, x)
  # An empty array carries the input's height and width (odd or even) to the backward pass.
  return out, (first, jnp.zeros((x.shape[1], x.shape[2], 0), x.dtype))


def _max_pool_bwd(residuals, g):
  first, hw = residuals
  n, _, _, c = g.shape
  shape = jax.ShapeDtypeStruct((n, hw.shape[0], hw.shape[1], c), g.dtype)
  per_window = [jnp.where(first == k, g, jnp.zeros((), g.dtype)) for k in range(9)]
  # Each window's gradient back to its pixels: the transpose of the slicing (a strided pad).
  (grad_x,) = jax.linear_transpose(_pool_windows, shape)(per_window)
  return grad_x, None  # `tie` only places the computation: no gradient.


max_pool_3x3_s2.defvjp(_max_pool_fwd, _max_pool_bwd)
