"""VGG (Simonyan & Zisserman 2015), with and without BatchNorm, exact to torchvision's.

Submodule names are torchvision's Sequential indices (`features_0`, `classifier_6`), so a
torchvision state_dict converts by renaming. Without BatchNorm the model has no 'batch_stats'
collection: `init` returns {'params'} only, and `apply(..., mutable=['batch_stats'])` returns an
empty update, which the trainer's `updates.get('batch_stats', batch_stats)` already accepts.

Dropout (classifier, torchvision's p=0.5) is active only with train=True, which then needs a
'dropout' rng: `apply(..., train=True, rngs={'dropout': key})`, as the trainer passes.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax.models.blocks import _pad
from resnet_jax.models.pooling import adaptive_avg_pool
from resnet_jax.models.resnet import conv_init

# Table 1 of the paper, columns A, B, D, E: output channels of each 3x3 convolution, 'M' for a
# 2x2 max-pool.
CONFIGS = {
  11: (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'),
  13: (64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'),
  16: (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'),
  19: (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M',
       512, 512, 512, 512, 'M'),
}
# torchvision's classifier init: N(0, 0.01) weights, zero biases.
linear_init = nn.initializers.normal(0.01)


class VGG(nn.Module):
  """Plain 3x3 convolution stacks, five max-pools, a 4096-4096-classes MLP on a 7x7 map."""

  depth: int = 16  # 11, 13, 16 or 19 weight layers.
  batch_norm: bool = False  # BN after every convolution (torchvision's vgg*_bn).
  num_classes: int = 1000
  include_top: bool = True  # False returns the last feature map (before the 7x7 pooling).
  dropout_rate: float = 0.5  # torchvision's; only with train=True (needs a 'dropout' rng).
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  zero_init_residual: bool = False  # No residual branches: accepted so the trainer's call fits.
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False, return_stages: bool = False):
    """Logits [N, num_classes]; return_stages adds 'C1'..'C5', the map after each max-pool."""
    if self.depth not in CONFIGS:
      raise ValueError(f'depth={self.depth}: VGG is defined for {sorted(CONFIGS)}.')
    x = jnp.asarray(x, self.dtype)
    stages, index, stride = {}, 0, 1
    for v in CONFIGS[self.depth]:
      if v == 'M':
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        stride *= 2
        stages[f'C{stride.bit_length() - 1}'] = x
        index += 1
        continue
      x = nn.Conv(
        v, (3, 3), padding=_pad(1), kernel_init=conv_init, bias_init=nn.initializers.zeros,
        dtype=self.dtype, param_dtype=self.param_dtype, name=f'features_{index}',
      )(x)
      index += 1
      if self.batch_norm:
        x = nn.BatchNorm(
          use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
          dtype=self.dtype, param_dtype=self.param_dtype, name=f'features_{index}',
        )(x)
        index += 1
      x = nn.relu(x)
      index += 1
    out = self._classifier(x, train) if self.include_top else x
    return {**stages, 'output': out} if return_stages else out

  def _classifier(self, x, train):
    x = adaptive_avg_pool(x, (7, 7))
    # Flatten in torch's (C, H, W) order so classifier_0's kernel is torchvision's, transposed.
    x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)
    dense = lambda n, i: nn.Dense(
      n, kernel_init=linear_init, bias_init=nn.initializers.zeros, dtype=self.dtype,
      param_dtype=self.param_dtype, name=f'classifier_{i}',
    )
    drop = nn.Dropout(self.dropout_rate, deterministic=not train)
    x = drop(nn.relu(dense(4096, 0)(x)))
    x = drop(nn.relu(dense(4096, 3)(x)))
    return jnp.asarray(dense(self.num_classes, 6)(x), jnp.float32)
