"""torch's pooling semantics that flax lacks: adaptive average pooling and ceil-mode max pooling.

VGG's classifier and GoogLeNet's auxiliary heads depend on them to accept any input size
exactly as torchvision does, which is what makes a small-input parity test meaningful.
"""

import jax.numpy as jnp
import numpy as np


def _adaptive_weights(size_in: int, size_out: int) -> np.ndarray:
  # torch's bins: output i averages input [floor(i * n / m), ceil((i + 1) * n / m)); bins overlap
  # when n is not a multiple of m and repeat inputs when n < m (a 1x1 map becomes 7x7 copies).
  w = np.zeros((size_out, size_in), np.float32)
  for i in range(size_out):
    start, end = (i * size_in) // size_out, -(-((i + 1) * size_in) // size_out)
    w[i, start:end] = 1.0 / (end - start)
  return w


def adaptive_avg_pool(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
  """torch's AdaptiveAvgPool2d(size) on NHWC: a fixed averaging matrix per spatial axis."""
  if x.shape[1:3] == tuple(size):
    return x  # the common 224 case: exact and free
  wh = jnp.asarray(_adaptive_weights(x.shape[1], size[0]), x.dtype)
  ww = jnp.asarray(_adaptive_weights(x.shape[2], size[1]), x.dtype)
  return jnp.einsum('ih,nhwc,jw->nijc', wh, x, ww)


def max_pool_ceil(x: jnp.ndarray, window: int, stride: int, padding: int = 0) -> jnp.ndarray:
  """torch's MaxPool2d(window, stride, padding, ceil_mode=True) on NHWC (-inf padding).

  ceil_mode keeps a last, partial window as long as it starts inside the input or the left
  padding; GoogLeNet's 112 -> 56 -> 28 -> 14 -> 7 sizes rely on it.
  """
  import flax.linen as nn

  pads = []
  for size in x.shape[1:3]:
    out = -(-(size + 2 * padding - window) // stride) + 1
    if (out - 1) * stride >= size + padding:
      out -= 1
    pads.append((padding, (out - 1) * stride + window - size - padding))
  return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)
