"""Every registered model: shapes, parameter counts, stage outputs (no compilation: eval_shape)."""

import jax
import jax.numpy as jnp
import pytest

from resnet_jax.models import ResNet, create_model, list_models, model_fields
from resnet_jax.models.vgg import VGG
from resnet_jax.summary import summarize

# torchvision's own totals (torchvision.models.<name>().parameters()), checked against torch in
# tests/interop for the five parity models; paper Table 6 for CIFAR (0.27M, 0.46M, 0.66M,
# 0.85M, 1.7M); timm's resnet50d and the counts their definitions imply.
EXPECTED_PARAMS = {
  'resnet18': 11_689_512,
  'resnet34': 21_797_672,
  'resnet50': 25_557_032,
  'resnet101': 44_549_160,
  'resnet152': 60_192_808,
  'resnext50_32x4d': 25_028_904,
  'resnext101_32x8d': 88_791_336,
  'resnext101_64x4d': 83_455_272,
  'wide_resnet50_2': 68_883_240,
  'wide_resnet101_2': 126_886_696,
  'resnet50d': 25_576_264,
  # torchvision (checked against torch itself in tests/interop/test_torchvision_zoo.py).
  'vgg11': 132_863_336,
  'vgg16': 138_357_544,
  'vgg16_bn': 138_365_992,
  'googlenet': 6_624_904,  # without the aux heads, as torchvision's published count
  # timm's seresnet50/101, seresnext50_32x4d, resnest50d, resnest101e (same definitions);
  # papers: SE-ResNet-50 28.1M (Hu et al.), ResNeSt-50 27.5M and -101 48.3M (Zhang et al.).
  'seresnet50': 28_088_024,
  'seresnet101': 49_326_872,
  'seresnext50_32x4d': 27_559_896,
  'resnest50': 27_483_240,
  'resnest101': 48_275_016,
}
CIFAR_PAPER_PARAMS_M = {20: '0.27', 32: '0.46', 44: '0.66', 56: '0.85', 110: '1.7'}
# torchvision's model table (GMACs at 224x224).
EXPECTED_GMACS = {'resnet18': 1.81, 'resnet50': 4.09, 'resnet152': 11.51}


def _abstract(name, size=None, **overrides):
  model = create_model(name, **overrides)
  size = size or (32 if getattr(model, 'stem', None) == 'cifar' else 224)
  x = jnp.zeros((2, size, size, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False, return_stages=True), variables)
  return model, variables, out


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def test_registry_is_complete():
  names = set(list_models())
  for required in [
    'resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152', 'resnet200',
    'resnet50b', 'resnet50c', 'resnet50d', 'resnet101d', 'resnet152d', 'resnet50_v1',
    'resnext50_32x4d', 'resnext101_32x8d', 'resnext101_64x4d', 'wide_resnet50_2',
    'wide_resnet101_2', 'preact_resnet18', 'preact_resnet152', 'cifar_resnet20',
    'cifar_resnet110', 'cifar_plain20', 'cifar_plain56', 'plain18', 'plain34',
  ]:
    assert required in names


@pytest.mark.parametrize('name', list_models())
def test_every_model_shapes(name):
  model, variables, out = _abstract(name)
  assert out['output'].shape == (2, model.num_classes)
  assert out['output'].dtype == jnp.float32
  # VGG without BN has no statistics, hence no 'batch_stats' collection (flax drops empty ones).
  no_bn = isinstance(model, VGG) and not model.batch_norm
  assert set(variables) == ({'params'} if no_bn else {'params', 'batch_stats'})
  stages = sorted(k for k in out if k.startswith('C'))
  if not isinstance(model, ResNet):
    # Other families: every stage they report has the stride its key says; C5 is 7x7 at 224.
    assert stages[-1] == 'C5' and len(stages) >= 3
    for k in stages:
      assert out[k].shape[1] == 224 // 2 ** int(k[1:]), k
  elif model.stem == 'cifar':
    if name != 'resnet_tiny':
      assert [out[k].shape[1] for k in stages] == [32, 16, 8]
  else:
    assert stages == ['C2', 'C3', 'C4', 'C5']
    assert [out[k].shape[1] for k in stages] == [56, 28, 14, 7]
    expansion = 1 if model.block == 'basic' else 4  # bottleneck and resnest blocks
    assert out['C5'].shape[-1] == 512 * expansion


@pytest.mark.parametrize('name', sorted(EXPECTED_PARAMS))
def test_parameter_counts_match_reference(name):
  _, variables, _ = _abstract(name, size=64)
  assert _count(variables['params']) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize('depth', sorted(CIFAR_PAPER_PARAMS_M))
def test_cifar_parameter_counts_match_paper(depth):
  _, variables, _ = _abstract(f'cifar_resnet{depth}')
  paper = CIFAR_PAPER_PARAMS_M[depth]  # compared at the precision the paper prints
  decimals = len(paper.split('.')[1])
  assert f'{_count(variables["params"]) / 1e6:.{decimals}f}' == paper
  # The plain twin is the same network minus the (parameter-free, option A) shortcuts.
  _, plain, _ = _abstract(f'cifar_plain{depth}')
  assert _count(plain['params']) == _count(variables['params'])


# Zagoruyko & Komodakis 2016, Table 1/5 and the Fashion-MNIST table (WRN40-4 8.9M).
WRN_PAPER_PARAMS_M = {'wrn16_4': '2.7', 'wrn16_8': '11.0', 'wrn22_8': '17.2', 'wrn28_10': '36.5',
                      'wrn40_2': '2.2', 'wrn40_4': '8.9'}


@pytest.mark.parametrize('name', sorted(WRN_PAPER_PARAMS_M))
def test_wide_resnet_parameter_counts_match_paper(name):
  model, variables, _ = _abstract(name)
  assert f'{_count(variables["params"]) / 1e6:.1f}' == WRN_PAPER_PARAMS_M[name]
  # Pre-activation all the way: the stem is a bare convolution, a final BN-ReLU precedes the head.
  assert 'bn1' not in variables['params'] and 'final_bn' in variables['params']


@pytest.mark.parametrize('name', sorted(EXPECTED_GMACS))
def test_macs_match_torchvision(name):
  _, totals = summarize(create_model(name), (1, 224, 224, 3))
  assert totals['macs'] / 1e9 == pytest.approx(EXPECTED_GMACS[name], rel=0.01)


def test_option_b_adds_projection_shortcuts():
  _, a, _ = _abstract('cifar_resnet20')
  _, b, _ = _abstract('cifar_resnet20', shortcut='conv')
  # 16->32 and 32->64 projections: 1x1 kernels plus their BN scale and bias.
  assert _count(b['params']) - _count(a['params']) == 16 * 32 + 64 + 32 * 64 + 128


def test_v1_strides_the_first_1x1_and_v15_the_3x3():
  def first_conv_shapes(name):
    rows, _ = summarize(create_model(name), (1, 224, 224, 3), depth=2)
    by_name = {r.name: r.output_shape for r in rows}
    return by_name['layer2_0/conv1'][1], by_name['layer2_0/conv2'][1]

  assert first_conv_shapes('resnet50_v1') == (28, 28)
  assert first_conv_shapes('resnet50') == (56, 28)
  assert model_fields('resnet50b') == model_fields('resnet50')


def test_resnet_d_downsamples_by_average_pool():
  rows, _ = summarize(create_model('resnet50d'), (1, 224, 224, 3), depth=0)
  by_name = {r.name: r for r in rows}
  assert 'layer2_0/downsample_conv' in by_name and 'stem_conv1' in by_name
  assert by_name['layer2_0/downsample_conv'].output_shape[1] == 28
  # The 1x1 projection runs after the pool, at stride 1: a quarter of ResNet-50's positions.
  rows50, _ = summarize(create_model('resnet50'), (1, 224, 224, 3), depth=0)
  plain = {r.name: r for r in rows50}['layer2_0/downsample_conv']
  assert by_name['layer2_0/downsample_conv'].macs == plain.macs


def test_include_top_and_pooling():
  model = create_model('resnet18', include_top=False, pooling=None)
  x = jnp.zeros((1, 64, 64, 3))
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  assert 'fc' not in v['params']
  assert jax.eval_shape(lambda v: model.apply(v, x), v).shape == (1, 2, 2, 512)
  for pooling in ('avg', 'max'):
    m = create_model('resnet18', include_top=False, pooling=pooling)
    assert jax.eval_shape(m.apply, v, x).shape == (1, 512)


def test_unknown_name_and_field_errors_are_helpful():
  with pytest.raises(ValueError, match='resnet50'):
    create_model('resnet_50')
  with pytest.raises(TypeError, match='num_class'):
    create_model('resnet18', num_class=10)
  with pytest.raises(ValueError, match='pooling'):
    _abstract('resnet18', pooling='mean')


def test_plain_nets_are_not_zero_initialised():
  # zero_init_residual zeroes a residual branch's last BN scale; a plain block has no shortcut,
  # so the same init would make every block output 0 and the network untrainable.
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  for name, scale in (('cifar_plain20', 1.0), ('cifar_resnet20', 0.0)):
    model = create_model(name)
    variables = model.init(jax.random.key(0), x)
    assert float(variables['params']['layer2_1']['bn2']['scale'].mean()) == scale
  plain = create_model('cifar_plain20')
  logits = plain.apply(plain.init(jax.random.key(0), x), x)
  assert float(jnp.std(logits, axis=0).mean()) > 1e-4  # outputs depend on the input
