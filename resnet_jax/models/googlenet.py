"""GoogLeNet / Inception v1 (Szegedy et al. 2015) exactly as torchvision builds it.

That means torchvision's deviations from the paper, kept so its weights load: BatchNorm after
every convolution (BasicConv2d: conv without bias, BN eps 1e-3), a 3x3 (not 5x5) convolution in
the third branch, ceil-mode max-pools, and the optional `transform_input` re-normalisation.
Submodule names mirror torchvision's (`inception4a/branch2_1/conv`), so conversion is renaming.

Auxiliary heads (`aux_logits=True`) add aux1/aux2 parameters; they run only when asked:
`apply(..., train=True, return_aux=True)` returns {'output', 'aux1', 'aux2'} (the paper weights
their losses 0.3). Plain calls return the main logits, so the trainer works either way.
Dropout (0.2 before fc, 0.7 in the aux heads, torchvision's) needs a 'dropout' rng in train mode.
"""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax.models.blocks import _pad
from resnet_jax.models.pooling import adaptive_avg_pool, max_pool_ceil
from resnet_jax.models.resnet import _dense_bias_init

# torchvision: trunc_normal_(std=0.01, a=-2, b=2) for conv and linear weights. The bounds are
# absolute, 200 standard deviations out, so this is a plain normal. Linear biases keep torch's
# default U(+-1/sqrt(fan_in)).
weight_init = nn.initializers.normal(0.01)

# (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj) of each Inception module (Table 1).
INCEPTIONS = {
  '3a': (64, 96, 128, 16, 32, 32),
  '3b': (128, 128, 192, 32, 96, 64),
  '4a': (192, 96, 208, 16, 48, 64),
  '4b': (160, 112, 224, 24, 64, 64),
  '4c': (128, 128, 256, 24, 64, 64),
  '4d': (112, 144, 288, 32, 64, 64),
  '4e': (256, 160, 320, 32, 128, 128),
  '5a': (256, 160, 320, 32, 128, 128),
  '5b': (384, 192, 384, 48, 128, 128),
}


class BasicConv(nn.Module):
  """Conv (no bias) -> BN -> ReLU; torchvision's BasicConv2d (`conv`, `bn`)."""

  features: int
  kernel: int
  conv: Any
  norm: Any
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    x = self.conv(self.features, (self.kernel, self.kernel), strides=(self.strides,) * 2,
                  padding=_pad(self.kernel // 2), name='conv')(x)
    return nn.relu(self.norm(name='bn')(x))


class Inception(nn.Module):
  widths: tuple
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    c1, c3r, c3, c5r, c5, pool = self.widths
    block = functools.partial(BasicConv, conv=self.conv, norm=self.norm)
    b1 = block(c1, 1, name='branch1')(x)
    b2 = block(c3, 3, name='branch2_1')(block(c3r, 1, name='branch2_0')(x))
    # torchvision's "5x5" branch is a 3x3 (a bug kept for its pretrained weights).
    b3 = block(c5, 3, name='branch3_1')(block(c5r, 1, name='branch3_0')(x))
    b4 = block(pool, 1, name='branch4_1')(max_pool_ceil(x, 3, 1, 1))
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class InceptionAux(nn.Module):
  num_classes: int
  conv: Any
  norm: Any
  dense: Any
  dropout_rate: float

  @nn.compact
  def __call__(self, x, train: bool):
    x = BasicConv(128, 1, self.conv, self.norm, name='conv')(adaptive_avg_pool(x, (4, 4)))
    x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # torch's (C, H, W) flatten order
    x = nn.relu(self.dense(1024, 'fc1', x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return jnp.asarray(self.dense(self.num_classes, 'fc2', x), jnp.float32)


class GoogLeNet(nn.Module):
  num_classes: int = 1000
  aux_logits: bool = False  # torchvision defaults to True; its 6,624,904 count is without them.
  transform_input: bool = False  # torchvision's; True for its ImageNet weights (set on load).
  include_top: bool = True  # False returns the 1024-channel map of inception5b.
  dropout_rate: float = 0.2
  aux_dropout_rate: float = 0.7
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-3  # torchvision's BasicConv2d.
  zero_init_residual: bool = False  # No residual branches: accepted so the trainer's call fits.
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, return_stages: bool = False,
               return_aux: bool = False):
    """Logits; return_stages adds C2..C5 (56/28/14/7 at 224); return_aux adds 'aux1', 'aux2'."""
    if return_aux and not self.aux_logits:
      raise ValueError('return_aux=True needs a model built with aux_logits=True.')
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=weight_init, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    norm = functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
      epsilon=self.bn_epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
    )
    dense = lambda n, name, x: nn.Dense(
      n, kernel_init=weight_init, bias_init=_dense_bias_init(x.shape[-1]), dtype=self.dtype,
      param_dtype=self.param_dtype, name=name,
    )(x)
    x = jnp.asarray(x, self.dtype)
    if self.transform_input:
      # torchvision's ImageNet weights expect inputs scaled to [-1, 1]; this maps its usual
      # mean/std-normalised input there.
      mean = jnp.asarray([0.485, 0.456, 0.406], self.dtype)
      std = jnp.asarray([0.229, 0.224, 0.225], self.dtype)
      x = x * (std / 0.5) + (mean - 0.5) / 0.5
    block = functools.partial(BasicConv, conv=conv, norm=norm)
    inception = lambda key: Inception(INCEPTIONS[key], conv, norm, name=f'inception{key}')
    aux = lambda name: InceptionAux(self.num_classes, conv, norm, dense, self.aux_dropout_rate,
                                    name=name)
    # Aux heads are built at init (their parameters exist) and run when asked for.
    run_aux = self.aux_logits and (return_aux or self.is_initializing())
    stages, aux_out = {}, {}
    x = max_pool_ceil(block(64, 7, strides=2, name='conv1')(x), 3, 2)
    x = block(192, 3, name='conv3')(block(64, 1, name='conv2')(x))
    stages['C2'] = x
    x = inception('3b')(inception('3a')(max_pool_ceil(x, 3, 2)))
    stages['C3'] = x
    x = inception('4a')(max_pool_ceil(x, 3, 2))
    if run_aux:
      aux_out['aux1'] = aux('aux1')(x, train)
    x = inception('4d')(inception('4c')(inception('4b')(x)))
    if run_aux:
      aux_out['aux2'] = aux('aux2')(x, train)
    x = inception('4e')(x)
    stages['C4'] = x
    x = inception('5b')(inception('5a')(max_pool_ceil(x, 2, 2)))
    stages['C5'] = x
    if self.include_top:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(jnp.mean(x, axis=(1, 2)))
      x = jnp.asarray(dense(self.num_classes, 'fc', x), jnp.float32)
    if return_stages or return_aux:
      return {**(stages if return_stages else {}), **aux_out, 'output': x}
    return x

