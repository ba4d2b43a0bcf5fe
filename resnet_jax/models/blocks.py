"""Residual blocks: basic and bottleneck, post- and pre-activation, and their shortcuts.

Blocks take `conv` and `norm` factories (functools.partial of nn.Conv / nn.BatchNorm) built once
by the network, so dtype, BatchNorm mode and initialisers are decided in one place.

Submodule names mirror torchvision (`conv1`, `bn1`, …, `downsample_conv`, `downsample_bn`):
parameter names are part of the checkpoint format and make weight conversion a renaming.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

ModuleDef = Callable[..., nn.Module]

# How a block's input reaches its output when the shapes differ (and whether it does at all).
#   conv: 1x1 convolution with the block's stride, then BN (torchvision, "option B").
#   avg:  2x2 average pool when strided, then 1x1 convolution and BN (ResNet-D, Bag of Tricks).
#   pad:  strided identity, extra channels zero-padded; no parameters (CIFAR "option A").
#   none: no shortcut at all: the "plain" network of the degradation study.
SHORTCUTS = ('conv', 'avg', 'pad', 'none')


def _pad(n: int) -> tuple[tuple[int, int], tuple[int, int]]:
  # Explicit symmetric padding as torch's `padding=n`: 'SAME' pads (0, 1) for stride 2 on even
  # inputs, which shifts every strided conv by one pixel against torchvision.
  return ((n, n), (n, n))


def shortcut(x: jnp.ndarray, features: int, strides: int, kind: str, conv, norm) -> jnp.ndarray:
  """Projects a block's input to its output's shape (identity when they already match).

  Called inside a block's compact `__call__`, so its layers are named in the block's own scope
  (`layer1_0/downsample_conv`), as torchvision's `layer1.0.downsample.0`.
  """
  if strides == 1 and x.shape[-1] == features:
    return x
  if kind == 'pad':
    x = x[:, ::strides, ::strides, :]
    extra = features - x.shape[-1]
    if extra < 0:
      raise ValueError(
        f"shortcut='pad' cannot narrow {x.shape[-1]} channels to {features}; use "
        "shortcut='conv', or widths that never decrease."
      )
    # Zeros on both sides of the channel axis, as in the paper's CIFAR code: no parameters.
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
  if kind == 'avg':
    if strides > 1:
      # ceil_mode + count_include_pad=False, as timm: odd inputs keep their last row/column.
      h_extra, w_extra = x.shape[1] % strides, x.shape[2] % strides
      x = nn.avg_pool(
        x,
        (strides, strides),
        strides=(strides, strides),
        padding=((0, h_extra and strides - h_extra), (0, w_extra and strides - w_extra)),
        count_include_pad=False,
      )
    strides = 1
  x = conv(features, (1, 1), strides=(strides, strides), name='downsample_conv')(x)
  return norm(name='downsample_bn')(x) if norm is not None else x


class SqueezeExcite(nn.Module):
  """Squeeze-and-excitation (Hu et al. 2018): per-channel gates from the pooled branch.

  mean over H, W -> 1x1 conv (C -> C // reduction, bias) -> ReLU -> 1x1 conv (-> C, bias) ->
  sigmoid -> scale. 1x1 convolutions rather than Dense keep the kernels in timm's/torchvision's
  SE layout (`se.fc1`, `se.fc2` as Conv2d), so their weights convert by renaming.
  """

  reduction: int
  conv: ModuleDef

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    channels = x.shape[-1]
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.relu(self.conv(max(1, channels // self.reduction), (1, 1), use_bias=True,
                          name='fc1')(s))
    s = self.conv(channels, (1, 1), use_bias=True, name='fc2')(s)
    return x * nn.sigmoid(s)


def _se(block: nn.Module, y: jnp.ndarray) -> jnp.ndarray:
  # On the residual branch after its last BN, before the addition (Hu et al., Fig. 3): the
  # identity path stays ungated.
  if not block.se_reduction:
    return y
  return SqueezeExcite(block.se_reduction, block.conv, name='se')(y)


class Block(nn.Module):
  """Fields every residual block takes, so that one table of arguments builds any of them."""

  planes: int  # Width of the block's 3x3 stage; the output has planes * expansion channels.
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable = nn.relu
  shortcut: str = 'conv'  # See SHORTCUTS.
  zero_init_last: bool = True
  stride_in_1x1: bool = False  # Bottlenecks only: stride on the first 1x1 (v1) or the 3x3 (v1.5).
  groups: int = 1  # Bottlenecks only: grouped 3x3 (ResNeXt cardinality).
  width_per_group: int = 64  # Bottlenecks only: 4 for 32x4d, 128 for Wide ResNet-50-2.
  se_reduction: int = 0  # Squeeze-excitation on the residual branch (Hu et al.); 0 = none.

  expansion = 1

  def bottleneck_width(self) -> int:
    # torchvision's width rule: ResNeXt-50 32x4d -> 128 at planes 64; Wide-50-2 -> 128 too.
    return int(self.planes * (self.width_per_group / 64.0)) * self.groups

  def bottleneck_strides(self) -> tuple[int, int]:
    """(stride of the first 1x1, stride of the 3x3)."""
    return (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)


class BasicBlock(Block):
  """Two 3x3 convolutions (ResNet-18/34, CIFAR ResNets); post-activation."""


  expansion = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if self.groups != 1 or self.width_per_group != 64:
      raise ValueError(
        f'BasicBlock got groups={self.groups}, width_per_group={self.width_per_group}; '
        'grouped/wide widths are defined for bottleneck blocks only (as in torchvision).'
      )
    s = (self.strides, self.strides)
    y = self.conv(self.planes, (3, 3), strides=s, padding=_pad(1), name='conv1')(x)
    y = self.act(self.norm(name='bn1')(y))
    y = self.conv(self.planes, (3, 3), padding=_pad(1), name='conv2')(y)
    y = _se(self, self.norm(name='bn2', scale_init=_last_scale_init(self.zero_init_last))(y))
    if self.shortcut != 'none':
      y = y + shortcut(x, self.planes, self.strides, self.shortcut, self.conv, self.norm)
    return self.act(y)


class Bottleneck(Block):
  """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand x4; post-activation.

  `stride_in_1x1=False` strides the 3x3 convolution (ResNet v1.5 / "ResNet-B", torchvision);
  True strides the first 1x1 (the original v1, Caffe and Keras).
  """

  expansion = 4

  @nn.compact
  def __call__(self, x: jnp.ndarray, narrow: jnp.ndarray | None = None,
               return_narrow: bool = False):
    """The block's output; `narrow` is the 3x3 stage's activated output (width channels).

    Given `narrow`, only the block's tail runs: conv3, bn3, squeeze-excitation, the shortcut
    from `x`, the addition and ReLU. return_narrow=True returns (output, narrow). Remat uses
    both to recompute a stage's wide block outputs from its narrow ones (models/remat.py,
    remat_chain).
    """
    if narrow is None:
      width = self.bottleneck_width()
      s1, s3 = self.bottleneck_strides()
      y = self.conv(width, (1, 1), strides=(s1, s1), name='conv1')(x)
      y = self.act(self.norm(name='bn1')(y))
      y = self.conv(
        width, (3, 3), strides=(s3, s3), padding=_pad(1), feature_group_count=self.groups,
        name='conv2',
      )(y)
      narrow = self.act(self.norm(name='bn2')(y))
    y = self.conv(self.planes * self.expansion, (1, 1), name='conv3')(narrow)
    y = _se(self, self.norm(name='bn3', scale_init=_last_scale_init(self.zero_init_last))(y))
    if self.shortcut != 'none':
      y = y + shortcut(
        x, self.planes * self.expansion, self.strides, self.shortcut, self.conv, self.norm
      )
    y = self.act(y)
    return (y, narrow) if return_narrow else y


class PreActBasicBlock(Block):
  """Pre-activation basic block (He et al. 2016, "Identity Mappings"): BN-ReLU-conv twice.

  The shortcut projection, when needed, reads the pre-activated input, as in the paper's code.
  There is no BN at the end of the branch, so zero-initialisation does not apply.
  """

  expansion = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    pre = self.act(self.norm(name='bn1')(x))
    s = (self.strides, self.strides)
    y = self.conv(self.planes, (3, 3), strides=s, padding=_pad(1), name='conv1')(pre)
    y = self.act(self.norm(name='bn2')(y))
    y = self.conv(self.planes, (3, 3), padding=_pad(1), name='conv2')(y)
    if self.shortcut == 'none':
      return y
    return y + _preact_shortcut(self, x, pre, self.planes)


class PreActBottleneck(Block):
  """Pre-activation bottleneck: BN-ReLU-1x1, BN-ReLU-3x3 (strided), BN-ReLU-1x1 x4."""


  expansion = 4

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    width = self.bottleneck_width()
    s1, s3 = self.bottleneck_strides()
    pre = self.act(self.norm(name='bn1')(x))
    y = self.conv(width, (1, 1), strides=(s1, s1), name='conv1')(pre)
    y = self.act(self.norm(name='bn2')(y))
    y = self.conv(
      width, (3, 3), strides=(s3, s3), padding=_pad(1), feature_group_count=self.groups,
      name='conv2',
    )(y)
    y = self.act(self.norm(name='bn3')(y))
    y = self.conv(self.planes * self.expansion, (1, 1), name='conv3')(y)
    if self.shortcut == 'none':
      return y
    return y + _preact_shortcut(self, x, pre, self.planes * self.expansion)


def _preact_shortcut(block: nn.Module, x, pre, features: int) -> jnp.ndarray:
  if block.se_reduction:
    raise ValueError(
      f'se_reduction={block.se_reduction} with preact=True: squeeze-excitation is defined here '
      'for post-activation blocks only; set preact=False or se_reduction=0.'
    )
  # Identity keeps the raw input (the clean identity path is the point of pre-activation);
  # a projection reads the normalised input, so the first BN serves both paths.
  if block.strides == 1 and x.shape[-1] == features:
    return x
  # A parameter-free shortcut has no BN to need, so it keeps the raw input too. Projections
  # carry no BN of their own: the sum is normalised by the next block's first BN.
  source = x if block.shortcut == 'pad' else pre
  return shortcut(source, features, block.strides, block.shortcut, block.conv, None)


def _last_scale_init(zero_init: bool):
  # Zero scale on the branch's last BN makes every block start as the identity (Goyal et al.
  # 2017); torchvision defaults to ones, so parity tests turn it off.
  return nn.initializers.zeros if zero_init else nn.initializers.ones


BLOCKS: dict[str, dict[bool, Any]] = {
  'basic': {False: BasicBlock, True: PreActBasicBlock},
  'bottleneck': {False: Bottleneck, True: PreActBottleneck},
}
