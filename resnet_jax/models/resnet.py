"""The ResNet network: stem, residual stages, head. Every variant is a set of these fields.

Layout is NHWC. Parameters are float32 (`param_dtype`); `dtype` is the compute dtype (bf16 for
mixed precision: BatchNorm still reduces in float32 and the logits are returned in float32).

BatchNorm carries no `axis_name`: under `jax.jit` with the batch sharded over a mesh, its
statistics are computed over the global batch (XLA inserts the cross-device reduction), which
is what pmap users got from SyncBN.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models.batch_norm import BatchNorm
from resnet_jax.models.blocks import BLOCKS, SHORTCUTS, _pad
from resnet_jax.models.layers import CONV_IMPLS, Conv, is_cpu_lowering, max_pool_3x3_s2, stored
from resnet_jax.models.remat import (
  remat_call,
  remat_call_in_order,
  remat_chain,
  remat_function,
  remat_pure,
)
from resnet_jax.models.resnest import ResNeStBottleneck

# ResNeSt's block lives in its own module (it imports the shortcut from blocks); no pre-act form.
_BLOCKS = {**BLOCKS, 'resnest': {False: ResNeStBottleneck}}

# torchvision's initialisation, so a fresh model here starts where a fresh torchvision one does:
# Kaiming-normal (fan_out, ReLU gain) convolutions, and nn.Linear's U(-1/sqrt(fan_in), ...).
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
dense_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')

STEMS = ('imagenet', 'deep', 'cifar')
POOLINGS = ('avg', 'max', None)


def _dense_bias_init(fan_in: int):
  bound = 1.0 / fan_in**0.5
  return lambda key, shape, dtype=jnp.float32: nn.initializers.uniform(2 * bound)(
    key, shape, dtype
  ) - bound


def _scan_blocks(block: nn.Module, x: jnp.ndarray, length: int) -> jnp.ndarray:
  """Applies `block` `length` times with stacked parameters (leading axis = block index).

  Parameters live at '<stage>_rest/...' with shape (length, ...); models/scan.py converts to
  and from the unrolled names, which stay the checkpoint and interop format.
  """
  body = nn.scan(
    lambda module, carry, _: (module(carry), None),
    variable_axes={'params': 0, 'batch_stats': 0},
    split_rngs={'params': True, 'dropout': True},
    length=length,
  )
  return body(block, x, None)[0]


# Residual chains longer than this store some block outputs (ResNet._stored_blocks).
LONG_CHAIN = 8
# With remat, blocks of chains longer than this end their backward pass before the next block's
# (ResNet._remat_in_order_blocks).
REMAT_IN_ORDER_CHAIN = 16


class ResNet(nn.Module):
  """A residual network assembled from stage sizes, widths and a block type."""

  stage_sizes: Sequence[int]  # Blocks per stage: (3, 4, 6, 3) is ResNet-50.
  block: str = 'basic'  # 'basic' (two 3x3) or 'bottleneck' (1x1-3x3-1x1, x4 expansion).
  preact: bool = False  # Pre-activation (v2) blocks and a final BN-ReLU.
  stage_widths: Sequence[int] = (64, 128, 256, 512)  # Block "planes" per stage.
  stem: str = 'imagenet'  # imagenet: 7x7/2 + maxpool; deep: three 3x3 + maxpool; cifar: one 3x3.
  stem_width: int = 64  # Stem output channels ('deep' uses stem_width // 2 inside).
  shortcut: str = 'conv'  # conv | avg (ResNet-D) | pad (CIFAR option A) | none (plain nets).
  stride_in_1x1: bool = False  # Bottleneck stride on the first 1x1 (v1) instead of the 3x3 (v1.5).
  groups: int = 1  # Grouped 3x3 convolution (ResNeXt cardinality).
  width_per_group: int = 64  # Bottleneck width per group: 4 for 32x4d, 128 for Wide ResNet-50-2.
  se_reduction: int = 0  # Squeeze-excitation in every block (SE-ResNet: 16); 0 = none.
  radix: int = 2  # Split-attention radix; read by block='resnest' only (ResNeSt: 2).
  num_classes: int = 1000  # Classifier outputs.
  include_top: bool = True  # Pool + classifier; False returns features (see `pooling`).
  pooling: str | None = 'avg'  # Without the top: 'avg' | 'max' pooled vector, None = feature map.
  zero_init_residual: bool = True  # Zero the last BN scale of each residual branch (not plain).
  bn_momentum: float = 0.9  # Running-average decay: flax's 0.9 is torch's momentum=0.1.
  bn_epsilon: float = 1e-5  # torchvision's epsilon.
  dtype: Any = jnp.float32  # Compute dtype.
  param_dtype: Any = jnp.float32  # Parameter dtype.
  conv_impl: str = 'auto'  # How convolutions lower: auto | xla | matmul | cpu (see layers.py).
  scan_blocks: bool = False  # nn.scan over each stage's repeated blocks: compile time ~ depth^0.
  remat: bool = False  # Recompute each block (and the stem: _remat_stem) in the backward pass.
  # With remat, the first this many bottleneck stages (the widest activations) each keep only
  # their input and their blocks' narrow 3x3 outputs (remat_chain); 0 = every block's input.
  remat_chain_stages: int = 1
  # Store every k-th block output of a long residual chain as one array (see _stored_blocks);
  # 0 = never; None = 2 under a CPU lowering ('cpu', 'onednn'), else 0. With remat too.
  store_every: int | None = None

  def _check(self) -> None:
    if self.block not in _BLOCKS:
      raise ValueError(f'block={self.block!r}: expected one of {sorted(_BLOCKS)}.')
    if self.preact and self.preact not in _BLOCKS[self.block]:
      raise ValueError(f'block={self.block!r} has no pre-activation form; set preact=False.')
    if self.stem not in STEMS:
      raise ValueError(f'stem={self.stem!r}: expected one of {STEMS}.')
    if self.shortcut not in SHORTCUTS:
      raise ValueError(f'shortcut={self.shortcut!r}: expected one of {SHORTCUTS}.')
    if self.conv_impl not in CONV_IMPLS:
      raise ValueError(f'conv_impl={self.conv_impl!r}: expected one of {CONV_IMPLS}.')
    if self.remat_chain_stages < 0:
      raise ValueError(f'remat_chain_stages={self.remat_chain_stages}: expected 0 (every block '
                       'keeps its input) or more (stages that keep their narrow tensors).')
    if self.store_every is not None and self.store_every < 0:
      raise ValueError(f'store_every={self.store_every}: expected None (auto), 0 (never) or k > 0.')
    if self.pooling not in POOLINGS:
      raise ValueError(f'pooling={self.pooling!r}: expected one of {POOLINGS}.')
    if len(self.stage_sizes) != len(self.stage_widths):
      raise ValueError(
        f'stage_sizes={tuple(self.stage_sizes)} and stage_widths={tuple(self.stage_widths)} '
        'must have one entry per stage.'
      )

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False, return_stages: bool = False):
    """Logits [N, num_classes] (or features); with return_stages a dict of every stage too.

    return_stages=True returns {'C<k>': stage output with stride 2**k, ..., 'output': ...}:
    C2..C5 for the ImageNet networks (the FPN backbone convention), C0..C2 for CIFAR ones.
    """
    self._check()
    conv = functools.partial(
      Conv, use_bias=False, kernel_init=conv_init, dtype=self.dtype,
      param_dtype=self.param_dtype, impl=self.conv_impl,
    )
    norm = functools.partial(
      BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
      epsilon=self.bn_epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
    )
    x = jnp.asarray(x, self.dtype)
    x = self._rematerialised_stem(x, conv, norm) if self._remat_stem(train) else self._stem(
      x, conv, norm)
    stride = 4 if self.stem != 'cifar' else 1
    stages = {}
    block_cls = _BLOCKS[self.block][self.preact]
    extra = {'radix': self.radix} if self.block == 'resnest' else {}
    # remat: keep only each block's input for the backward pass and recompute the rest (~1/3
    # more forward FLOPs for a large cut in activation memory). Unrolled blocks go through
    # remat_call, which orders each recomputation after the block's output gradient (see
    # models/remat.py); a scanned stage recomputes inside its backward loop anyway.
    scanned_cls = nn.remat(block_cls) if self.remat else block_cls

    to_store = self._stored_blocks()
    in_order = self._remat_in_order_blocks()

    def apply(block: nn.Module, x):
      y = ((remat_call_in_order if block.name in in_order else remat_call)(block, x)
           if self.remat else block(x))
      params = jax.tree.leaves(block.variables.get('params', {}))
      return stored(y, params[0]) if block.name in to_store and params else y

    for i, (num_blocks, planes) in enumerate(zip(self.stage_sizes, self.stage_widths)):
      block_fields = dict(
        planes=planes, conv=conv, norm=norm, shortcut=self.shortcut,
        # Without a shortcut a zero-scaled branch is the whole block: its output would be 0 and
        # nothing would train (plain nets have no residual branch to zero).
        zero_init_last=self.zero_init_residual and self.shortcut != 'none',
        stride_in_1x1=self.stride_in_1x1,
        groups=self.groups, width_per_group=self.width_per_group,
        se_reduction=self.se_reduction, **extra,
      )
      if self._remat_chain(train, i):
        x = self._rematerialised_chain(
          [block_cls(strides=2 if i > 0 and j == 0 else 1, parent=None, **block_fields)
           for j in range(num_blocks)], [f'layer{i + 1}_{j}' for j in range(num_blocks)], x)
        stride *= 2 if i > 0 else 1
        stages[f'C{stride.bit_length() - 1}'] = x
        continue
      # The first block changes shape (stride, width); the others repeat one shape.
      x = apply(block_cls(strides=2 if i > 0 else 1, name=f'layer{i + 1}_0', **block_fields), x)
      if self.scan_blocks and num_blocks > 2:
        rest = scanned_cls(strides=1, name=f'layer{i + 1}_rest', **block_fields)
        x = _scan_blocks(rest, x, num_blocks - 1)
      else:
        for j in range(1, num_blocks):
          x = apply(block_cls(strides=1, name=f'layer{i + 1}_{j}', **block_fields), x)
      stride *= 2 if i > 0 else 1
      stages[f'C{stride.bit_length() - 1}'] = x
    if self.preact:
      # Pre-activation blocks end on a convolution: normalise once before the head.
      x = nn.relu(norm(name='final_bn')(x))
      stages[f'C{stride.bit_length() - 1}'] = x
    out = self._head(x)
    if return_stages:
      return {**stages, 'output': out}
    return out

  def _stored_blocks(self) -> set[str]:
    """Names of the blocks whose outputs are stored behind a fusion boundary (layers.stored).

    Blocks joined by parameter-free shortcuts form a chain of residual additions, which XLA:CPU
    fuses into the consumers of every block's output and recomputes there, so the work grows
    with the square of the chain's length. A stored output cuts the chain. Measured on 2 cores
    (`bench train --variant`, bench/results/stored_outputs_*.json, medians of 2 interleaved
    rounds): ResNet-152 b8 (layer3: 36 blocks) 1.19x with every second output stored, +7% peak
    memory (every output 1.18x, +16%; every fourth 1.18x, +1.5%); CIFAR ResNet-20 b128@28 (one
    9-block chain through its 'pad' shortcuts) 1.08x, +2% (every output 1.07x, every fourth
    1.02x). Chains of at most 6 blocks gained nothing (ResNet-50 0.97-0.99x at +10-22% memory,
    WRN-16-2 0.99x), hence only chains longer than LONG_CHAIN. A projection shortcut starts a
    new chain; plain nets have none. With remat as well: without the stored outputs its
    ResNet-152 b8 step ran at 2.23x the plain step's time, with them at 1.23-1.34x
    (docs/performance.md).
    """
    every = self.store_every
    if every is None:
      every = 2 if is_cpu_lowering(self.conv_impl) else 0
    if not every:
      return set()
    return {name for chain in self._long_chains()
            for position, name in enumerate(chain, 1) if position % every == 0}

  def _long_chains(self, longer_than: int = LONG_CHAIN) -> list[list[str]]:
    """Block names of the residual chains longer than `longer_than` blocks (a projection
    shortcut starts a new chain; plain nets have none)."""
    if self.shortcut == 'none':
      return []
    names = [[f'layer{i + 1}_{j}' for j in range(n)] for i, n in enumerate(self.stage_sizes)]
    # 'pad' shortcuts have no parameters: the whole network is one chain.
    chains = [sum(names, [])] if self.shortcut == 'pad' else names
    return [chain for chain in chains if len(chain) > longer_than]

  def _remat_in_order_blocks(self) -> set[str]:
    """Blocks whose remat ends their backward pass before the next block's starts
    (remat_call_in_order): those of chains longer than REMAT_IN_ORDER_CHAIN, with the CPU
    lowering, where it was measured (on a mesh the order also serialises each block's gradient
    all-reduce). Planned peak with remat, tie vs none (bench/results/, 2026-12-07): ResNet-152
    b8 (layer3: 36 blocks) 0.943 vs 1.673 GB, CIFAR ResNet-110 b128@28 on 2 devices (one
    54-block chain) 0.250 vs 0.498, ResNet-101 b16 (23) 0.950 vs 1.677; but CIFAR ResNet-56
    (27) 0.136 vs 0.131 and ResNet-20 (9) 0.078 vs 0.070 on 2 devices."""
    if not is_cpu_lowering(self.conv_impl):
      return set()
    return {name for chain in self._long_chains(REMAT_IN_ORDER_CHAIN) for name in chain}

  def _stem(self, x, conv, norm):
    x = _stem_layers(x, conv, norm, self.stem, self.stem_width, self.preact)
    if self.stem == 'cifar':
      return x
    # torch's MaxPool2d(3, 2, padding=1); see max_pool_3x3_s2 for why not nn.max_pool.
    # With remat, the pooling's nine-way maximum is recomputed too (it kept eight stem-sized
    # partial maxima alive through the whole backward pass: ~100 MB at ResNet-50 b16).
    tie = _stem_kernel(self) if self._stores_pool_positions() else None
    return remat_function(max_pool_3x3_s2, tie)(x) if self.remat else max_pool_3x3_s2(x, tie)

  def _stores_pool_positions(self) -> bool:
    """Whether the max pool's positions are stored behind a conditional (max_pool_3x3_s2's
    `tie`): a fix for XLA:CPU's fusion, so with the CPU lowering only. On GPU a conditional's
    predicate is read by the host, which would add a sync to every step."""
    return is_cpu_lowering(self.conv_impl)

  def _remat_stem(self, train: bool) -> bool:
    """Whether remat recomputes the whole ImageNet stem in the backward pass, not just its pool.

    The stem convolution's output, kept for its BatchNorm's backward, is the largest single
    activation (ResNet-50 b16: 51 MB). Planned peak memory of the compiled one-device train step
    (bench train, 2026-12-04): ResNet-50 b16 0.688 -> 0.635 GB, b32 1.152 -> 1.046 GB; but
    ResNet-18 b32 0.481 -> 0.556 GB, hence bottleneck networks only. The CIFAR stem is one
    small convolution.
    """
    return train and self.remat and self.block == 'bottleneck' and self.stem != 'cifar'

  def _remat_chain(self, train: bool, stage: int) -> bool:
    """Whether remat runs stage `stage` (0-based) as a chain (remat_chain): it keeps the
    stage's input and its bottlenecks' narrow 3x3 outputs instead of every block's input."""
    return (train and self.remat and stage < self.remat_chain_stages
            and self.block == 'bottleneck' and not self.preact and not self.scan_blocks
            and not self.is_initializing())

  def _rematerialised_chain(self, blocks, names, x):
    """A stage's bottleneck blocks (unbound; their variables at `names`) under remat_chain.

    Two outputs are stored as one array each (layers.stored, a fusion boundary): the stage's
    output, which the next stage keeps as its input, and every output the backward pass
    recomputes through a block's tail. Otherwise XLA:CPU fuses the residual additions into
    their consumers and keeps the wide conv3 outputs instead. Planned peak of the one-device
    ResNet-50 b16 step with every stage as a chain: 0.807 GB with only the tails' outputs
    stored, 0.592 with every block's output stored too, 0.558 as here.
    """
    variables = [{col: self.variables[col][name] for col in ('params', 'batch_stats')}
                 for name in names]

    def tie(v):
      return jax.tree.leaves(v['params'])[0]

    def whole(block, last):
      def run(v, x):
        (y, narrow), updates = block.apply(v, x, return_narrow=True, mutable=['batch_stats'])
        return stored(y, tie(v)) if last else y, narrow, updates['batch_stats']
      return run

    def tail(block):
      def run(v, narrow, x):
        return stored(block.apply(v, x, narrow, mutable=['batch_stats'])[0], tie(v))
      return run

    last = len(blocks) - 1
    y, stats = remat_chain([whole(b, k == last) for k, b in enumerate(blocks)],
                           [tail(b) for b in blocks])(variables, x)
    if self.is_mutable_collection('batch_stats'):
      for name, value in zip(names, stats):
        self.put_variable('batch_stats', name, value)
    return y

  def _rematerialised_stem(self, x, conv, norm):
    """The stem as a pure function of (its variables, x), recomputed in the backward pass.

    Its variables stay where `_stem` puts them (a plain call creates them at init, so values and
    checkpoints are the same with and without remat).
    """
    if self.is_initializing():
      return self._stem(x, conv, norm)
    stem = _Stem(conv=conv, norm=norm, kind=self.stem, width=self.stem_width,
                 preact=self.preact, store_pool_positions=self._stores_pool_positions())
    names = jax.eval_shape(stem.init, jax.random.key(0), x)  # No BatchNorm if pre-activation.
    variables = {col: {name: self.variables[col][name] for name in tree}
                 for col, tree in names.items()}

    def apply(variables, x):
      y, updates = stem.apply(variables, x, mutable=['batch_stats'])
      return y, updates.get('batch_stats', {})

    y, batch_stats = remat_pure(apply)(variables, x)
    if self.is_mutable_collection('batch_stats'):
      for name, value in batch_stats.items():
        self.put_variable('batch_stats', name, value)
    return y

  def _head(self, x):
    pooling = self.pooling if not self.include_top else (self.pooling or 'avg')
    if pooling == 'avg':
      x = jnp.mean(x, axis=(1, 2))
    elif pooling == 'max':
      x = jnp.max(x, axis=(1, 2))
    if not self.include_top:
      return x
    x = nn.Dense(
      self.num_classes, kernel_init=dense_kernel_init, bias_init=_dense_bias_init(x.shape[-1]),
      dtype=self.dtype, param_dtype=self.param_dtype, name='fc',
    )(x)
    return jnp.asarray(x, jnp.float32)


def _stem_kernel(module: nn.Module) -> jax.Array:
  """The stem convolution's kernel, created by _stem_layers in `module`: a replicated
  parameter that max_pool_3x3_s2 reads its conditional's predicate from (no communication)."""
  return module.variables['params']['conv1']['kernel']


def _stem_layers(x, conv, norm, kind: str, width: int, preact: bool):
  """The stem's layers (before the max pool), created in the module that calls this."""
  if kind == 'cifar':
    x = conv(width, (3, 3), padding=_pad(1), name='conv1')(x)
    # Pre-activation (WRN): the first block's BN-ReLU normalises the stem's output.
    return x if preact else nn.relu(norm(name='bn1')(x))
  if kind == 'deep':
    # ResNet-C: three 3x3 convolutions replace the 7x7 at the same cost (Bag of Tricks, §4.2).
    mid = width // 2
    x = conv(mid, (3, 3), strides=(2, 2), padding=_pad(1), name='stem_conv1')(x)
    x = nn.relu(norm(name='stem_bn1')(x))
    x = conv(mid, (3, 3), padding=_pad(1), name='stem_conv2')(x)
    x = nn.relu(norm(name='stem_bn2')(x))
    x = conv(width, (3, 3), padding=_pad(1), name='conv1')(x)
  else:
    x = conv(width, (7, 7), strides=(2, 2), padding=_pad(3), name='conv1')(x)
  if not preact:
    # Pre-activation nets normalise at the start of every block instead (as Keras' V2).
    x = nn.relu(norm(name='bn1')(x))
  return x


class _Stem(nn.Module):
  """An ImageNet stem with its max pool, as a module of its own: what remat applies as a pure
  function (ResNet._rematerialised_stem). Its variables have the names ResNet gives them."""
  conv: Any
  norm: Any
  kind: str
  width: int
  preact: bool
  store_pool_positions: bool  # ResNet._stores_pool_positions

  @nn.compact
  def __call__(self, x):
    x = _stem_layers(x, self.conv, self.norm, self.kind, self.width, self.preact)
    return max_pool_3x3_s2(x, _stem_kernel(self) if self.store_pool_positions else None)
