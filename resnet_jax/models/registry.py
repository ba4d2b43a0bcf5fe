"""Every named model as data: name -> the ResNet fields that make it, and the constructor.

Variant letters (He et al. 2019, "Bag of Tricks"; timm's naming):
  v1   stride on the bottleneck's first 1x1 (the 2015 paper, Caffe, Keras).
  b    stride on the 3x3 instead ("v1.5", torchvision's resnet50): the default here too.
  c    b + deep stem (three 3x3 convolutions, 32-32-64 channels).
  d    c + average-pool downsampling in the shortcut.
CIFAR ResNets follow He et al. 2016 §4.2 (16/32/64 filters, 6n+2 layers, option A shortcut;
`create_model('cifar_resnet20', shortcut='conv')` gives option B). `plain*` are the same
networks without shortcuts, for the degradation study (Fig. 6). `wrn<depth>_<k>` are the Wide
ResNets for CIFAR-sized inputs (WRN-28-10 etc.).

Beyond the ResNet family (each its own module class, see MODEL_CLASSES): SE-ResNet/ResNeXt (Hu
et al. 2018; SE reduction 16 in every block, stride on the 3x3 as torchvision/timm), ResNeSt
(Zhang et al. 2020: deep stem, avg-down shortcut, radix-2 split attention), VGG and GoogLeNet as
torchvision builds them, and keras.applications' ResNets (`keras_resnet50`, `keras_resnet50v2`).
"""

import difflib
import types

import flax.linen as nn

from resnet_jax.models.googlenet import GoogLeNet
from resnet_jax.models.keras_resnet import KERAS_DEPTHS, KerasResNet
from resnet_jax.models.resnet import ResNet
from resnet_jax.models.vgg import CONFIGS as VGG_CONFIGS
from resnet_jax.models.vgg import VGG

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
  return {**dict(block=block, stage_sizes=stages), **fields}


def _cifar(depth: int, **fields) -> dict:
  n = (depth - 2) // 6
  return {**dict(block='basic', stage_sizes=(n, n, n), shortcut='pad', **_CIFAR), **fields}


def _wide(depth: int, k: int) -> dict:
  """WRN-depth-k (Zagoruyko & Komodakis 2016): pre-activation basic blocks, (depth - 4) / 6 per
  stage, widths 16k/32k/64k after a 16-filter 3x3 stem, 1x1 projections where the shape changes
  (dropout between the convolutions, the paper's option, is not included)."""
  n = (depth - 4) // 6
  return dict(block='basic', preact=True, stage_sizes=(n, n, n), shortcut='conv', stem='cifar',
              stem_width=16, stage_widths=(16 * k, 32 * k, 64 * k), num_classes=10)


# The WRN paper's CIFAR table, plus WRN-16-2 (a fast one) and WRN-40-4 (Fashion-MNIST's table).
WIDE_CIFAR = ((16, 2), (16, 4), (16, 8), (22, 8), (28, 10), (40, 2), (40, 4))


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
  for d, k in WIDE_CIFAR:
    table[f'wrn{d}_{k}'] = _wide(d, k)
  for d in (50, 101):
    table[f'seresnet{d}'] = _imagenet(d, se_reduction=16)
  table['seresnext50_32x4d'] = _imagenet(50, groups=32, width_per_group=4, se_reduction=16)
  # ResNeSt-50: deep stem 32-32-64; ResNeSt-101: 64-64-128 (the paper's stem_width 64).
  table['resnest50'] = _imagenet(50, block='resnest', stem='deep', shortcut='avg', radix=2)
  table['resnest101'] = _imagenet(
    101, block='resnest', stem='deep', stem_width=128, shortcut='avg', radix=2
  )
  # A few thousand parameters: compiles in seconds, for tests of everything around the model.
  table['resnet_tiny'] = dict(
    block='basic', stage_sizes=(1, 1), stage_widths=(8, 16), stem='cifar', stem_width=8,
    num_classes=10,
  )
  return table


def _other_families() -> dict[str, tuple[type, dict]]:
  table = {}
  for d in VGG_CONFIGS:
    table[f'vgg{d}'] = (VGG, dict(depth=d))
    table[f'vgg{d}_bn'] = (VGG, dict(depth=d, batch_norm=True))
  table['googlenet'] = (GoogLeNet, {})
  for d, stages in KERAS_DEPTHS.items():
    table[f'keras_resnet{d}'] = (KerasResNet, dict(stage_sizes=stages))
    table[f'keras_resnet{d}v2'] = (KerasResNet, dict(stage_sizes=stages, preact=True))
  return table


_OTHERS = _other_families()
# Read-only views: the table is data, not a place to register things at run time.
MODEL_TABLE = types.MappingProxyType(
  {**_build_table(), **{name: fields for name, (_, fields) in _OTHERS.items()}}
)
# The module class of each name; everything not listed is a `ResNet`.
MODEL_CLASSES = types.MappingProxyType(
  {name: cls for name, (cls, _) in _OTHERS.items()}
)


def list_models() -> list[str]:
  """All model names, sorted."""
  return sorted(MODEL_TABLE)


def model_class(name: str) -> type:
  """The flax module class that builds `name` (ResNet, VGG, GoogLeNet or KerasResNet)."""
  model_fields(name)  # the helpful unknown-name error
  return MODEL_CLASSES.get(name, ResNet)


def model_fields(name: str) -> dict:
  """The fields (of `model_class(name)`) that define `name` (a copy)."""
  if name not in MODEL_TABLE:
    close = difflib.get_close_matches(name, MODEL_TABLE, n=3)
    hint = f' Did you mean {", ".join(close)}?' if close else ''
    raise ValueError(
      f'Unknown model {name!r}.{hint} resnet_jax.models.list_models() gives all '
      f'{len(MODEL_TABLE)} names.'
    )
  return dict(MODEL_TABLE[name])


def residual_blocks(name: str) -> int:
  """How many blocks `name`'s stages hold (0 for a model without stages or an unknown name)."""
  return sum(MODEL_TABLE[name].get('stage_sizes', ())) if name in MODEL_TABLE else 0


def create_model(name: str, **overrides) -> nn.Module:
  """The named model, with any field overridden (num_classes=10, dtype=jnp.bfloat16, …)."""
  fields = model_fields(name)
  cls = model_class(name)
  known = set(cls.__dataclass_fields__) - {'parent', 'name'}
  unknown = sorted(set(overrides) - known)
  if unknown:
    raise TypeError(
      f'create_model({name!r}) got unknown field(s) {unknown}; {cls.__name__} fields are '
      f'{sorted(known)}.'
    )
  return cls(**{**fields, **overrides})
