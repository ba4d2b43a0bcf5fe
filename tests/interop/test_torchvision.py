"""Exact parity with torchvision: same weights, same input -> same logits and stage outputs."""

import functools

import numpy as np
import pytest

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from resnet_jax.interop.torchvision import from_torchvision, to_torchvision  # noqa: E402
from resnet_jax.models import create_model  # noqa: E402

pytestmark = pytest.mark.torch

PARITY_MODELS = ['resnet18', 'resnet50', 'resnet152', 'resnext50_32x4d', 'wide_resnet50_2']


def _randomised_torchvision(name: str, seed: int = 0):
  torch.manual_seed(seed)
  net = getattr(torchvision.models, name)(weights=None)
  # Fresh BatchNorms are identities (mean 0, var 1, scale 1, bias 0), which would hide a swapped
  # or misplaced statistic, and let activations grow to ~1e3 through the residual sums. Give each
  # BN a random affine part and calibrate its running statistics on a batch, as training would:
  # every tensor is then non-trivial and the logits are O(1), as in a trained network.
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batch
    net.train()(torch.randn(4, 3, 224, 224))
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        # Near-dead channels calibrate to variances ~1e-6; eval-mode BN would then multiply
        # rounding noise by up to 1/sqrt(eps).
        m.running_var.clamp_(min=0.1)
    for layer in [net.layer1, net.layer2, net.layer3, net.layer4]:
      for block in layer:
        # As in a trained network, residual branches stay small against the identity path.
        # Random ones with gain > 1 make a 36-block stage amplify float32 rounding ~1e4-fold
        # (torch itself then lands 7e-4 from float64 on ResNet-152), testing chaos, not mapping.
        getattr(block, 'bn3', block.bn2).weight.uniform_(0.1, 0.3)
  return net.eval()


def _torch_stage_outputs(net, x):
  y = net.maxpool(net.relu(net.bn1(net.conv1(x))))
  stages = {}
  for k, layer in zip(range(2, 6), [net.layer1, net.layer2, net.layer3, net.layer4]):
    y = layer(y)
    stages[f'C{k}'] = y
  return stages, net.fc(torch.flatten(net.avgpool(y), 1))


@pytest.mark.parametrize('name', PARITY_MODELS)
def test_logits_and_stages_match_torchvision(name):
  net = _randomised_torchvision(name)
  x = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
  with torch.no_grad():
    stages_t, logits_t = _torch_stage_outputs(net, torch.from_numpy(x))
    np.testing.assert_array_equal(net(torch.from_numpy(x)).numpy(), logits_t.numpy())

  variables = from_torchvision(net.state_dict(), name)
  model = create_model(name)
  out = jax.jit(lambda v, x: model.apply(v, x, train=False, return_stages=True))(
    variables, jnp.asarray(x.transpose(0, 2, 3, 1))
  )
  err = np.abs(np.asarray(out['output']) - logits_t.numpy()).max()
  scale = np.abs(logits_t.numpy()).max()
  assert err <= 1e-4, f'{name}: max abs logit error {err:.2e} (logits up to {scale:.2f})'
  for key, ref in stages_t.items():
    ours = np.asarray(out[key]).transpose(0, 3, 1, 2)
    assert ours.shape == ref.shape, key
    stage_err = np.abs(ours - ref.numpy()).max()
    assert stage_err <= 1e-4 * max(1.0, np.abs(ref.numpy()).max()), (key, stage_err)


@pytest.mark.parametrize('name', ['resnet18', 'resnext50_32x4d'])
def test_round_trip_is_bit_exact(name):
  model = create_model(name, num_classes=7)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(1),
                          jnp.zeros((1, 32, 32, 3)))
  # Distinct random values in every leaf, batch statistics too, so that every mapping is
  # checked (from shapes alone: nothing to compile).
  rng = np.random.default_rng(2)
  variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)
  state = to_torchvision(variables, name)
  back = from_torchvision(state, name)
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, variables))
  # And torchvision accepts it as its own (strict: every key, no extras).
  getattr(torchvision.models, name)(num_classes=7).load_state_dict(state, strict=True)


def test_files_pth_and_safetensors(tmp_path):
  from safetensors.torch import save_file

  net = _randomised_torchvision('resnet18')
  torch.save(net.state_dict(), tmp_path / 'r18.pth')
  save_file(net.state_dict(), str(tmp_path / 'r18.safetensors'))
  a = from_torchvision(tmp_path / 'r18.pth', 'resnet18')
  b = from_torchvision(str(tmp_path / 'r18.safetensors'), 'resnet18')
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_wrong_architecture_names_the_mismatch():
  state = _randomised_torchvision('resnet18').state_dict()
  with pytest.raises(ValueError, match=r'layer1\.0\.conv3\.weight'):
    from_torchvision(state, 'resnet50')


def test_parity_check_sees_a_single_misplaced_statistic():
  # Negative control: the conditioning above must not make the comparison blind.
  net = _randomised_torchvision('resnet18')
  x = np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)
  with torch.no_grad():
    ref = net(torch.from_numpy(x)).numpy()
  state = net.state_dict()
  state['layer3.1.bn1.running_mean'], state['layer3.1.bn1.running_var'] = (
    state['layer3.1.bn1.running_var'], state['layer3.1.bn1.running_mean'].abs()
  )
  variables = from_torchvision(state, 'resnet18')
  out = create_model('resnet18').apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert np.abs(np.asarray(out) - ref).max() > 1e-3


@pytest.mark.parametrize('name', ['resnext101_32x8d', 'resnext101_64x4d', 'wide_resnet101_2',
                                  'resnet34', 'resnet101'])
def test_every_other_torchvision_model_converts(name):
  # Construction and conversion only (no forward): checks every key and shape of the family.
  net = getattr(torchvision.models, name)(weights=None)
  variables = from_torchvision(net.state_dict(), name)
  n_ours = sum(np.size(a) for a in jax.tree.leaves(variables['params']))
  assert n_ours == sum(p.numel() for p in net.parameters())


def test_scanned_layout_converts_through_the_unrolled_one():
  net = _randomised_torchvision('resnet50')
  variables = from_torchvision(net.state_dict(), 'resnet50', scan_blocks=True)
  assert variables['params']['layer3_rest']['conv1']['kernel'].shape[0] == 5
  x = np.random.default_rng(0).standard_normal((1, 3, 64, 64), dtype=np.float32)
  with torch.no_grad():
    ref = net(torch.from_numpy(x)).numpy()
  out = jax.jit(create_model('resnet50', scan_blocks=True).apply)(
    variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert np.abs(np.asarray(out) - ref).max() <= 1e-4
  back = to_torchvision(variables, 'resnet50', as_torch=False)
  for k, v in net.state_dict().items():
    if not k.endswith('num_batches_tracked'):
      np.testing.assert_array_equal(back[k], v.numpy())
