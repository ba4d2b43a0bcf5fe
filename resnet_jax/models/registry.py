"""Every named model as data: name -> the ResNet fields that make it, and the constructor.

Variant letters (He et al. 2019, "Bag of Tricks"; timm's naming):
  v1   stride on the bottleneck's first 1x1 (the 2015 paper, Caffe, Keras).
  b    stride on the 3x3 instead ("v1.5", torchvision's resnet50): the default here too.
  c    b + deep stem (three 3x3 convolutions, 32-32-64 channels).
  d    c + average-pool downsampling in the shortcut.
CIFAR ResNets follow He et al. 2016 §4.2 (16/32/64 filters, 6n+2 layers, option A shortcut;
`create_model('cifar_resnet20', shortcut='conv')` gives option B). `plain*` are the same
networks without shortcuts, for the degradation study (Fig. 6).
"""

import difflib
import types

import flax.linen as nn

from resnet_jax.models.resnet import ResNet

_IMAGENET_DEPTHS = {
  18: ('basic', (2, 2, 2, 2)),
  34: ('basic', (3, 4, 6, 3)),
  50: ('bottleneck', (3, 4, 6, 3)),
  101: ('bottleneck', (3, 4, 23, 3)),
  152: ('bottleneck', (3, 8, 36, 3)),
  200: ('bottleneck', (3, 24, 36, 3)),
}
_CIFAR = dict(stem='cifar', stem_width=16, stage_widths=(16, 32, 64), num_classes=10)


def _imagenet(depth: int, **fields) -> dict:
  block, stages = _IMAGENET_DEPTHS[depth]
  return dict(block=block, stage_sizes=stages, **fields)


def _cifar(depth: int, **fields) -> dict:
  n = (depth - 2) // 6
  return {**dict(block='basic', stage_sizes=(n, n, n), shortcut='pad', **_CIFAR), **fields}


def _build_table() -> dict[str, dict]:
  table = {f'resnet{d}': _imagenet(d) for d in _IMAGENET_DEPTHS}
  for d in (50, 101, 152):
    table[f'resnet{d}_v1'] = _imagenet(d, stride_in_1x1=True)
    table[f'resnet{d}b'] = _imagenet(d)
    table[f'resnet{d}c'] = _imagenet(d, stem='deep')
    table[f'resnet{d}d'] = _imagenet(d, stem='deep', shortcut='avg')
  table['resnext50_32x4d'] = _imagenet(50, groups=32, width_per_group=4)
  table['resnext101_32x8d'] = _imagenet(101, groups=32, width_per_group=8)
  table['resnext101_64x4d'] = _imagenet(101, groups=64, width_per_group=4)
  table['wide_resnet50_2'] = _imagenet(50, width_per_group=128)
  table['wide_resnet101_2'] = _imagenet(101, width_per_group=128)
  for d in (18, 34, 50, 101, 152):
    table[f'preact_resnet{d}'] = _imagenet(d, preact=True)
  for d in (18, 34):
    table[f'plain{d}'] = _imagenet(d, shortcut='none')
  for d in (20, 32, 44, 56, 110):
    table[f'cifar_resnet{d}'] = _cifar(d)
    table[f'cifar_plain{d}'] = _cifar(d, shortcut='none')
  # A few thousand parameters: compiles in seconds, for tests of everything around the model.
  table['resnet_tiny'] = dict(
    block='basic', stage_sizes=(1, 1), stage_widths=(8, 16), stem='cifar', stem_width=8,
    num_classes=10,
  )
  return table


# Read-only view: the table is data, not a place to register things at run time.
MODEL_TABLE = types.MappingProxyType(_build_table())


def list_models() -> list[str]:
  """All model names, sorted."""
  return sorted(MODEL_TABLE)


def model_fields(name: str) -> dict:
  """The ResNet fields that define `name` (a copy)."""
  if name not in MODEL_TABLE:
    close = difflib.get_close_matches(name, MODEL_TABLE, n=3)
    hint = f' Did you mean {", ".join(close)}?' if close else ''
    raise ValueError(
      f'Unknown model {name!r}.{hint} resnet_jax.models.list_models() gives all '
      f'{len(MODEL_TABLE)} names.'
    )
  return dict(MODEL_TABLE[name])


def create_model(name: str, **overrides) -> nn.Module:
  """The named model, with any ResNet field overridden (num_classes=10, dtype=jnp.bfloat16, …)."""
  fields = model_fields(name)
  known = set(ResNet.__dataclass_fields__) - {'parent', 'name'}
  unknown = sorted(set(overrides) - known)
  if unknown:
    raise TypeError(
      f'create_model({name!r}) got unknown field(s) {unknown}; ResNet fields are {sorted(known)}.'
    )
  return ResNet(**{**fields, **overrides})
