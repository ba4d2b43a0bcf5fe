"""torchvision parity beyond ResNets: vgg16_bn and googlenet through resnet_jax.interop."""

import numpy as np
import pytest

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from resnet_jax.interop.torchvision import from_torchvision, to_torchvision  # noqa: E402
from resnet_jax.models import create_model  # noqa: E402

pytestmark = pytest.mark.torch


def _randomised(name: str, size: int, **kwargs):
  torch.manual_seed(0)
  net = getattr(torchvision.models, name)(weights=None, **kwargs)
  # As tests/interop/test_torchvision.py: fresh BNs are identities that would hide a swapped
  # statistic; a random affine part and statistics calibrated on a batch make every tensor
  # non-trivial while the activations stay O(1).
  with torch.no_grad():
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
      m.weight.uniform_(0.5, 1.5)
      m.bias.uniform_(-0.2, 0.2)
      m.reset_running_stats()
      m.momentum = None
    net.train()(torch.randn(4, 3, size, size))
    for m in bns:
      m.running_var.clamp_(min=0.1)  # near-dead channels: see test_torchvision.py
  return net.eval()


def _compare(name, net, size, **overrides):
  x = np.random.default_rng(0).standard_normal((2, 3, size, size), dtype=np.float32)
  with torch.no_grad():
    ref = net(torch.from_numpy(x)).numpy()
  variables = from_torchvision(net.state_dict(), name, **overrides)
  model = create_model(name, **overrides)
  ours = jax.jit(lambda v, x: model.apply(v, x, train=False))(
    variables, jnp.asarray(x.transpose(0, 2, 3, 1))
  )
  err = np.abs(np.asarray(ours) - ref).max()
  scale = np.abs(ref).max()
  print(f'{name} at {size}: max abs logit error {err:.2e} (logits up to {scale:.2f})')
  assert err <= 1e-4, f'{name}: max abs logit error {err:.2e} (logits up to {scale:.2f})'


def test_vgg16_bn_matches_torchvision():
  # 32x32: five pools leave 1x1, which AdaptiveAvgPool2d((7, 7)) replicates; 64 would leave
  # 2x2 with overlapping bins. Both sizes exercise our adaptive pooling against torch's.
  net = _randomised('vgg16_bn', 64)
  for size in (32, 64):
    _compare('vgg16_bn', net, size)


def test_googlenet_matches_torchvision():
  # 96x96 keeps every ceil-mode pool non-trivial (96 -> 48 -> 24 -> 12 -> 6 -> 3) and gives the
  # aux heads' 4x4 adaptive pool a 6x6 input with overlapping bins.
  net = _randomised('googlenet', 96, aux_logits=True, init_weights=True)
  _compare('googlenet', net, 96, aux_logits=True)
  # transform_input is not a weight: same state_dict, the flag on both sides.
  net.transform_input = True
  _compare('googlenet', net, 96, aux_logits=True, transform_input=True)


def test_googlenet_aux_heads_match_torchvision_in_train_mode():
  net = _randomised('googlenet', 96, aux_logits=True, init_weights=True)
  for m in net.modules():
    if isinstance(m, torch.nn.Dropout):
      m.p = 0.0  # train mode for BN batch statistics and aux outputs, without randomness
  x = np.random.default_rng(1).standard_normal((2, 3, 96, 96), dtype=np.float32)
  with torch.no_grad():
    out = net.train()(torch.from_numpy(x))
  variables = from_torchvision(net.state_dict(), 'googlenet')
  model = create_model('googlenet', aux_logits=True, dropout_rate=0.0, aux_dropout_rate=0.0)
  ours, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, return_aux=True,
                                             mutable=['batch_stats']))(
    variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  for key, ref in [('output', out.logits), ('aux1', out.aux_logits1), ('aux2', out.aux_logits2)]:
    np.testing.assert_allclose(np.asarray(ours[key]), ref.numpy(), atol=1e-4, err_msg=key)


@pytest.mark.parametrize('name', ['vgg11', 'vgg13_bn', 'vgg19', 'googlenet'])
def test_conversion_and_param_counts(name):
  net = getattr(torchvision.models, name)(weights=None, **(
    {'aux_logits': False, 'init_weights': True} if name == 'googlenet' else {}))
  variables = from_torchvision(net.state_dict(), name)
  assert sum(np.size(a) for a in jax.tree.leaves(variables['params'])) == sum(
    p.numel() for p in net.parameters())
  # And back: torchvision accepts the state_dict strictly.
  net.load_state_dict(to_torchvision(variables, name), strict=True)
