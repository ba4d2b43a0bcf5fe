"""2-D convolutions on oneDNN's CPU kernels, with gradients, on one device or a 'data' mesh.

`conv_impl='onednn'` (layers.Conv) sends float32 and bfloat16 kxk convolutions, and bfloat16 1x1
ones, here: forward, input gradient and kernel gradient each one oneDNN primitive through XLA's
FFI (resnet_jax/kernels). Values equal XLA's convolution within float32 rounding (the same sums
in another order; tested to 1e-5 relative). In bfloat16 (`half_precision`) the activations are
bf16 and oneDNN's bf16 kernels accumulate in float32 (about 2x float32's rate on a CPU with
avx512_bf16: docs/performance.md); the kernel stays a float32 parameter, rounded to bf16 inside
the call, and its gradient is returned in float32, unrounded.

On a mesh with a 'data' axis (the trainer's and evaluator's steps set it as the abstract mesh:
parallel.with_abstract_mesh) the call runs per device under `shard_map`, its batch split and
the kernel replicated; the kernel gradient is summed over the devices by shard_map's own
transpose. Without a mesh it runs whole (GSPMD would replicate its operands).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from resnet_jax import parallel, xla_flags
from resnet_jax.kernels import onednn

# A kernel below this size is cheaper copied (XLA's copy before its in-place update) than tied
# to the input gradient, which would compute the image's gradient for the stem.
_TIE_MIN_KERNEL_BYTES = 1 << 16


def availability(dtype=jnp.float32) -> tuple[bool, str]:
  """(whether convolutions of `dtype` run on oneDNN here, what says so or why not): the
  handlers built and registered (kernels/onednn.py) and, for bfloat16, a CPU with the bf16
  instructions that make them fast (onednn.native_bf16)."""
  ok, why = onednn.status()
  if ok and jnp.dtype(dtype) == jnp.bfloat16:
    ok, isa = onednn.native_bf16()
    why = f'{why}, {isa}' if ok else f'{isa}: no native bf16 convolutions'
  return ok, why


def available(dtype=jnp.float32) -> bool:
  """Whether convolutions of `dtype` run on oneDNN here (`availability`)."""
  return availability(dtype)[0]


def output_shape(x_shape, kernel_shape, strides, padding) -> tuple[int, ...]:
  n, *spatial, _ = x_shape
  out = [(size + lo + hi - k) // s + 1
         for size, k, s, (lo, hi) in zip(spatial, kernel_shape[:2], strides, padding)]
  return (n, *out, kernel_shape[-1])


def _call(target: str, shape, dtype, *args, strides, padding, threads):
  (top, bottom), (left, right) = padding
  fn = jax.ffi.ffi_call(onednn.TARGETS[target], jax.ShapeDtypeStruct(shape, dtype))
  return fn(*args, sh=np.int64(strides[0]), sw=np.int64(strides[1]), pt=np.int64(top),
            pb=np.int64(bottom), pl=np.int64(left), pr=np.int64(right),
            threads=np.int64(threads))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv(x: jax.Array, kernel: jax.Array, strides, padding, threads: int) -> jax.Array:
  """NHWC x HWIO -> NHWC in x's dtype (float32 or bfloat16; the kernel is rounded to it);
  `padding` ((top, bottom), (left, right)); oneDNN on `threads` cores: the batch split into
  that many slices on XLA's CPU thread pool (a batch smaller than that runs whole on an OpenMP
  team). The kernel's gradient has the kernel's dtype, computed in float32."""
  geometry = dict(strides=strides, padding=padding, threads=threads)
  return _call('forward', output_shape(x.shape, kernel.shape, strides, padding), x.dtype, x,
               kernel.astype(x.dtype), **geometry)


def _conv_fwd(x, kernel, strides, padding, threads):
  return conv(x, kernel, strides, padding, threads), (x, kernel)


def _conv_bwd(strides, padding, threads, residuals, grad):
  x, kernel = residuals
  geometry = dict(strides=strides, padding=padding, threads=threads)
  grad_x = _call('backward_data', x.shape, x.dtype, grad, kernel.astype(x.dtype), **geometry)
  grad_k = _call('backward_weights', kernel.shape, jnp.float32, x, grad, _tie(grad_x, kernel),
                 **geometry)
  return grad_x, grad_k.astype(kernel.dtype)


conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def pointwise(x: jax.Array, kernel: jax.Array, threads: int) -> jax.Array:
  """x @ kernel over the channel axis (a stride-1 1x1 convolution; kernel [in, out]), whose
  kernel gradient is oneDNN's 1x1 convolution backward-weights primitive.

  For float32 (layers.Conv sends bfloat16 1x1 convolutions to `conv`). The forward pass and
  the input gradient stay XLA's matmuls (YNNPACK's: level with or faster than oneDNN's on
  ResNet shapes). The kernel gradient as a matmul contracts over every pixel of the batch,
  which XLA needs the activation transposed for (layers.pointwise_matmul); oneDNN reduces over
  NHWC as it is. Dtypes as `conv`'s.
  """
  return _matmul(x, kernel)


def _matmul(x, kernel):
  """x @ kernel in x's dtype. A bf16 product asks for float32 results: XLA:CPU runs that on
  YNNPACK's bf16 kernels (~2x float32's rate), but a bf16-result dot as a float32 dot between
  converts (docs/performance.md)."""
  y = jax.lax.dot_general(x, kernel.astype(x.dtype), (((x.ndim - 1,), (0,)), ((), ())),
                          preferred_element_type=jnp.float32)
  return y.astype(x.dtype)


def _pointwise_fwd(x, kernel, threads):
  return _matmul(x, kernel), (x, kernel)


def _pointwise_bwd(threads, residuals, grad):
  x, kernel = residuals
  grad_x = _matmul(grad, kernel.T)
  geometry = dict(strides=(1, 1), padding=((0, 0), (0, 0)), threads=threads)
  grad_k = _call('backward_weights', (1, 1, *kernel.shape), jnp.float32, x, grad,
                 _tie(grad_x, kernel), **geometry)
  return grad_x, grad_k[0, 0].astype(kernel.dtype)


pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


def _tie(grad_x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The kernel gradient's ordering operand: the input gradient (the kernel's last reader), so
  that XLA updates the donated kernel in place instead of copying it first (as layers._after;
  one element per example: no communication on a mesh). The handler does not read it."""
  if kernel.size * kernel.dtype.itemsize >= _TIE_MIN_KERNEL_BYTES:
    return grad_x.reshape(grad_x.shape[0], -1)[:, 0]
  return jnp.zeros((1,), jnp.float32)


def _per_device(fn, x: jax.Array, kernel: jax.Array) -> jax.Array:
  """fn(x, kernel, threads=this device's share of the cores), split over the abstract mesh's
  'data' axis if it has one (the batch split, the kernel replicated)."""
  mesh = jax.sharding.get_abstract_mesh()
  axis = parallel.DATA_AXIS
  devices = 1 if mesh.empty or axis not in mesh.axis_names else mesh.shape[axis]
  # Virtual CPU devices share the process's cores; each device's calls get its share.
  threads = max(1, xla_flags.available_cores() // max(1, min(devices,
                                                              jax.local_device_count())))
  fn = functools.partial(fn, threads=threads)
  if devices == 1:
    return fn(x, kernel)
  data = PartitionSpec(axis)
  return jax.shard_map(fn, mesh=mesh, in_specs=(data, PartitionSpec()), out_specs=data,
                       check_vma=False)(x, kernel)


def convolve(x: jax.Array, kernel: jax.Array, strides, padding) -> jax.Array:
  """`conv` on this process's cores, split over the abstract mesh's 'data' axis if it has one."""
  return _per_device(functools.partial(_conv_positional, strides=tuple(strides),
                                       padding=tuple(padding)), x, kernel)


def convolve_pointwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`pointwise` (NHWC x [in, out]) on this process's cores, per device as `convolve`."""
  return _per_device(_pointwise_positional, x, kernel)


def _conv_positional(x, kernel, *, strides, padding, threads):
  return conv(x, kernel, strides, padding, threads)


def _pointwise_positional(x, kernel, *, threads):
  return pointwise(x, kernel, threads)
