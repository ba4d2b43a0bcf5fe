"""ResNeSt's split-attention bottleneck (Zhang et al. 2020, "ResNeSt: Split-Attention Networks").

The network around it is the ResNet here (registry: deep stem, `shortcut='avg'`, block='resnest').
Submodule names mirror the authors' and timm's code (`conv2.conv`, `conv2.bn0`, `conv2.fc1`,
`conv2.bn1`, `conv2.fc2`), so their weights convert by renaming.
"""

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax.models.blocks import Block, ModuleDef, _last_scale_init, _pad, shortcut


class SplitAttention(nn.Module):
  """A 3x3 convolution into `radix` splits, recombined by attention over the splits (Fig. 2).

  With cardinality > 1 each cardinal group attends over its own splits (grouped fc1/fc2).
  """

  features: int  # Output channels (the bottleneck width).
  radix: int
  groups: int  # Cardinality.
  conv: ModuleDef
  norm: ModuleDef
  act: Callable = nn.relu
  reduction_factor: int = 4  # The paper's attention width: features * radix / 4, at least 32.

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    r, c = self.radix, self.features
    x = self.conv(c * r, (3, 3), padding=_pad(1), feature_group_count=self.groups * r,
                  name='conv')(x)
    x = self.act(self.norm(name='bn0')(x))
    n, h, w, _ = x.shape
    # Channel layout is (split, channel), as torch's view(B, radix, C, H, W) of NCHW.
    splits = x.reshape(n, h, w, r, c)
    gap = jnp.mean(splits.sum(axis=3), axis=(1, 2), keepdims=True)  # [n, 1, 1, c]
    inter = max(c * r // self.reduction_factor, 32)
    a = self.conv(inter, (1, 1), use_bias=True, feature_group_count=self.groups, name='fc1')(gap)
    a = self.act(self.norm(name='bn1')(a))
    a = self.conv(c * r, (1, 1), use_bias=True, feature_group_count=self.groups, name='fc2')(a)
    # fc2's channels are (group, split, channel-in-group): the softmax runs over the splits of
    # each group (the authors' rSoftMax), then the weights go back to (split, channel) order.
    a = a.reshape(n, self.groups, r, c // self.groups)
    a = nn.softmax(a, axis=2) if r > 1 else nn.sigmoid(a)
    a = a.transpose(0, 2, 1, 3).reshape(n, 1, 1, r, c)
    return jnp.sum(splits * a, axis=3)


class ResNeStBottleneck(Block):
  """1x1 reduce, split-attention 3x3, [3x3 average-pool when strided], 1x1 expand x4.

  Striding is done by the "avd" average pool after the split-attention convolution (the paper's
  avg-down in the block, `avd_first=False`), so the attention sees the full-resolution map.
  """

  shortcut: str = 'avg'
  radix: int = 2  # Splits per group whose attention-weighted sum forms the output.

  expansion = 4

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if self.se_reduction or self.stride_in_1x1:
      raise ValueError(
        f'block="resnest" got se_reduction={self.se_reduction}, '
        f'stride_in_1x1={self.stride_in_1x1}: split attention already gates the channels and '
        'the average pool does the striding; leave both at their defaults (0, False).'
      )
    if self.radix < 1:
      raise ValueError(f'radix={self.radix}: expected >= 1 (2 is the paper\'s ResNeSt).')
    width = int(self.planes * (self.width_per_group / 64.0)) * self.groups
    y = self.conv(width, (1, 1), name='conv1')(x)
    y = self.act(self.norm(name='bn1')(y))
    y = SplitAttention(width, self.radix, self.groups, self.conv, self.norm, self.act,
                       name='conv2')(y)
    if self.strides > 1:
      # torch AvgPool2d(3, stride, padding=1): zero padding counted in the border averages.
      y = nn.avg_pool(y, (3, 3), strides=(self.strides, self.strides), padding=_pad(1),
                      count_include_pad=True)
    y = self.conv(self.planes * self.expansion, (1, 1), name='conv3')(y)
    y = self.norm(name='bn3', scale_init=_last_scale_init(self.zero_init_last))(y)
    if self.shortcut != 'none':
      y = y + shortcut(
        x, self.planes * self.expansion, self.strides, self.shortcut, self.conv, self.norm
      )
    return self.act(y)
