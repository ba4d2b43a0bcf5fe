"""2-D convolutions on oneDNN's CPU kernels, with gradients, on one device or a 'data' mesh.

`conv_impl='onednn'` (layers.Conv) sends float32 kxk convolutions here: forward, input gradient
and kernel gradient each one oneDNN primitive through XLA's FFI (resnet_jax/kernels). Values
equal XLA's convolution within float32 rounding (the same sums in another order; tested to
1e-5 relative). On a mesh with a 'data' axis (the trainer's and evaluator's steps set it as the
abstract mesh: parallel.with_abstract_mesh) the call runs per device under `shard_map`, its
batch split and the kernel replicated; the kernel gradient is summed over the devices by
shard_map's own transpose. Without a mesh it runs whole (GSPMD would replicate its operands).
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


def available() -> bool:
  """Whether oneDNN's handlers are built and registered on this host (kernels/onednn.py)."""
  return onednn.status()[0]


def output_shape(x_shape, kernel_shape, strides, padding) -> tuple[int, ...]:
  n, *spatial, _ = x_shape
  out = [(size + lo + hi - k) // s + 1
         for size, k, s, (lo, hi) in zip(spatial, kernel_shape[:2], strides, padding)]
  return (n, *out, kernel_shape[-1])


def _call(target: str, shape, *args, strides, padding, threads):
  (top, bottom), (left, right) = padding
  fn = jax.ffi.ffi_call(onednn.TARGETS[target], jax.ShapeDtypeStruct(shape, jnp.float32))
  return fn(*args, sh=np.int64(strides[0]), sw=np.int64(strides[1]), pt=np.int64(top),
            pb=np.int64(bottom), pl=np.int64(left), pr=np.int64(right),
            threads=np.int64(threads))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv(x: jax.Array, kernel: jax.Array, strides, padding, threads: int) -> jax.Array:
  """NHWC x HWIO -> NHWC, float32; `padding` ((top, bottom), (left, right)); oneDNN on
  `threads` cores."""
  geometry = dict(strides=strides, padding=padding, threads=threads)
  return _call('forward', output_shape(x.shape, kernel.shape, strides, padding), x, kernel,
               **geometry)


def _conv_fwd(x, kernel, strides, padding, threads):
  return conv(x, kernel, strides, padding, threads), (x, kernel)


def _conv_bwd(strides, padding, threads, residuals, grad):
  x, kernel = residuals
  geometry = dict(strides=strides, padding=padding, threads=threads)
  grad_x = _call('backward_data', x.shape, grad, kernel, **geometry)
  # The kernel gradient is ordered after the input gradient, the kernel's last reader, so that
  # XLA updates the donated kernel in place instead of copying it first (as layers._after;
  # one element per example: no communication on a mesh). The handler does not read it.
  if kernel.size * kernel.dtype.itemsize >= _TIE_MIN_KERNEL_BYTES:
    after = grad_x[:, 0, 0, 0]
  else:
    after = jnp.zeros((1,), jnp.float32)
  grad_k = _call('backward_weights', kernel.shape, x, grad, after, **geometry)
  return grad_x, grad_k


conv.defvjp(_conv_fwd, _conv_bwd)


def convolve(x: jax.Array, kernel: jax.Array, strides, padding) -> jax.Array:
  """`conv` on this process's cores, split over the abstract mesh's 'data' axis if it has one."""
  mesh = jax.sharding.get_abstract_mesh()
  axis = parallel.DATA_AXIS
  devices = 1 if mesh.empty or axis not in mesh.axis_names else mesh.shape[axis]
  # Virtual CPU devices share the process's cores; each device's calls get its share.
  threads = max(1, xla_flags.available_cores() // max(1, min(devices,
                                                              jax.local_device_count())))
  fn = functools.partial(_conv_positional, strides=tuple(strides), padding=tuple(padding),
                         threads=threads)
  if devices == 1:
    return fn(x, kernel)
  data = PartitionSpec(axis)
  return jax.shard_map(fn, mesh=mesh, in_specs=(data, PartitionSpec()), out_specs=data,
                       check_vma=False)(x, kernel)


def _conv_positional(x, kernel, *, strides, padding, threads):
  return conv(x, kernel, strides, padding, threads)
