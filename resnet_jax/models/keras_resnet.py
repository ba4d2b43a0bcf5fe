"""keras.applications' ResNet50/101/152 (v1) and ResNet50V2/101V2/152V2, layer for layer.

Kept apart from `ResNet` because Keras' graphs differ in more than fields: v1 has biases on
every convolution (and BN eps 1.001e-5); V2 strides the LAST block of each stage (the first
stage too, the last stage not at all), subsamples the identity by a 1x1 max-pool, biases only
the shortcut and expanding convolutions, and max-pools the stem's zero-padded, un-normalised
convolution output. Submodule names are Keras' layer names (`conv2_block1_1_conv`), so
`resnet_jax.interop.keras` loads Keras weights by name, and initialisers are Keras' own
(Glorot-uniform kernels, zero biases) so a fresh model starts where a fresh Keras one does.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

KERAS_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def _zero_pad(x, n):
  # Keras' ZeroPadding2D: zeros, also before max-pools (V2 pools values that can be negative).
  return jnp.pad(x, ((0, 0), (n, n), (n, n), (0, 0)))


class KerasResNet(nn.Module):
  stage_sizes: Sequence[int]
  preact: bool = False  # V2 (pre-activation) graph.
  stage_widths: Sequence[int] = (64, 128, 256, 512)
  num_classes: int = 1000
  include_top: bool = True
  zero_init_residual: bool = False  # v1 only: zero the `_3_bn` scale (Keras uses ones).
  bn_momentum: float = 0.99  # Keras' BatchNormalization default (same convention as flax's).
  bn_epsilon: float = 1.001e-5  # keras.applications' value.
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, return_stages: bool = False):
    """Logits (pre-softmax: Keras' `classifier_activation=None`); stages keyed by stride."""
    conv = functools.partial(
      nn.Conv, padding='VALID', kernel_init=nn.initializers.glorot_uniform(),
      bias_init=nn.initializers.zeros, dtype=self.dtype, param_dtype=self.param_dtype,
    )
    norm = functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
      epsilon=self.bn_epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
    )
    x = jnp.asarray(x, self.dtype)
    x = conv(64, (7, 7), strides=(2, 2), name='conv1_conv')(_zero_pad(x, 3))
    if not self.preact:
      x = nn.relu(norm(name='conv1_bn')(x))
    x = nn.max_pool(_zero_pad(x, 1), (3, 3), strides=(2, 2))
    stride, stages = 4, {}
    last = len(self.stage_sizes) - 1
    for i, (n, width) in enumerate(zip(self.stage_sizes, self.stage_widths)):
      for j in range(n):
        name = f'conv{i + 2}_block{j + 1}'
        if self.preact:
          s = 2 if j == n - 1 and i < last else 1
          x = self._v2_block(x, width, s, j == 0, name, conv, norm)
        else:
          s = 2 if j == 0 and i > 0 else 1
          x = self._v1_block(x, width, s, j == 0, name, conv, norm)
        stride *= s
      stages[f'C{stride.bit_length() - 1}'] = x
    if self.preact:
      x = nn.relu(norm(name='post_bn')(x))
      stages[f'C{stride.bit_length() - 1}'] = x
    if self.include_top:
      x = jnp.mean(x, axis=(1, 2))
      x = nn.Dense(self.num_classes, kernel_init=nn.initializers.glorot_uniform(),
                   dtype=self.dtype, param_dtype=self.param_dtype, name='predictions')(x)
      x = jnp.asarray(x, jnp.float32)
    return {**stages, 'output': x} if return_stages else x

  def _v1_block(self, x, width, s, project, name, conv, norm):
    # keras.applications.resnet.block1: stride on the first 1x1; every conv has a bias.
    last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    shortcut = x
    if project:
      shortcut = conv(4 * width, (1, 1), strides=(s, s), name=f'{name}_0_conv')(x)
      shortcut = norm(name=f'{name}_0_bn')(shortcut)
    y = conv(width, (1, 1), strides=(s, s), name=f'{name}_1_conv')(x)
    y = nn.relu(norm(name=f'{name}_1_bn')(y))
    y = conv(width, (3, 3), padding=((1, 1), (1, 1)), name=f'{name}_2_conv')(y)
    y = nn.relu(norm(name=f'{name}_2_bn')(y))
    y = conv(4 * width, (1, 1), name=f'{name}_3_conv')(y)
    y = norm(name=f'{name}_3_bn', scale_init=last_scale)(y)
    return nn.relu(shortcut + y)

  def _v2_block(self, x, width, s, project, name, conv, norm):
    # keras.applications.resnet_v2 block2: the projection reads the pre-activated input, the
    # identity the raw one (subsampled by MaxPooling2D(1, strides=s)).
    pre = nn.relu(norm(name=f'{name}_preact_bn')(x))
    if project:
      shortcut = conv(4 * width, (1, 1), strides=(s, s), name=f'{name}_0_conv')(pre)
    else:
      shortcut = x[:, ::s, ::s, :]
    y = conv(width, (1, 1), use_bias=False, name=f'{name}_1_conv')(pre)
    y = nn.relu(norm(name=f'{name}_1_bn')(y))
    y = conv(width, (3, 3), strides=(s, s), padding=((1, 1), (1, 1)), use_bias=False,
             name=f'{name}_2_conv')(y)
    y = nn.relu(norm(name=f'{name}_2_bn')(y))
    y = conv(4 * width, (1, 1), name=f'{name}_3_conv')(y)
    return shortcut + y
