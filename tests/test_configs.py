"""Every config loads and validates; each kind of mistake raises one ConfigError naming it."""

import importlib
import os
import sys

import ml_collections
import pytest

from resnet_jax.config_validation import ConfigError, default_config, validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_NAMES = sorted(
    f[:-3] for f in os.listdir(os.path.join(ROOT, 'configs'))
    if f.endswith('.py') and f not in ('__init__.py', 'imagenet_common.py', 'cifar10_common.py'))


@pytest.fixture
def configs_importable(monkeypatch):
  # Config files import their base as `configs.default`, as when run from the repo root.
  monkeypatch.syspath_prepend(ROOT)
  yield
  for name in [m for m in sys.modules if m == 'configs' or m.startswith('configs.')]:
    del sys.modules[name]


def load(name):
  return importlib.import_module(f'configs.{name}').get_config()


def test_there_are_all_the_recipes():
  expected = {'default', 'digits', 'fashion_mnist', 'r50_torchvision_v1', 'fake_r50'}
  expected |= {f'r{d}' for d in (18, 34, 50, 101, 152, 200)}
  expected |= {f'cifar10_{k}{d}' for k in ('resnet', 'plain') for d in (20, 32, 44, 56, 110)}
  assert expected <= set(CONFIG_NAMES)


@pytest.mark.parametrize('name', CONFIG_NAMES)
def test_config_is_valid_on_8_devices(name, configs_importable):
  config = load(name)
  validate_config(config, num_devices=8)
  for field in ('batch_size', 'seed', 'log_every_steps', 'eval_every_steps'):
    assert field in config
  assert config.checkpoint.every_steps > 0 and config.model.name


def test_recipes_say_what_the_papers_say(configs_importable):
  r50 = load('r50')
  assert (r50.batch_size, r50.num_epochs, r50.optim.warmup_epochs) == (1024, 100.0, 5.0)
  assert r50.optim.base_lr * r50.batch_size / r50.optim.lr_batch_base == pytest.approx(0.4)
  c110 = load('cifar10_resnet110')
  assert (c110.batch_size, c110.total_steps, tuple(c110.optim.decay_boundaries_steps)) == (
      128, 64_000, (32_000, 48_000))
  assert (c110.optim.warmup_steps, c110.optim.warmup_init_lr) == (400, 0.01)


def broken(**changes):
  # Built from a dict: ConfigDict's own type check would stop a wrong type at assignment, but
  # a config file that builds its own ConfigDict gets no such check.
  config = default_config().to_dict()
  for key, value in changes.items():
    target = config
    *parents, leaf = key.split('.')
    for p in parents:
      target = target[p]
    target[leaf] = value
  return ml_collections.ConfigDict(config)


@pytest.mark.parametrize('changes, field, message', [
    ({'optim.base_rl': 0.1}, 'optim.base_rl', 'did you mean optim.base_lr'),
    ({'batch_sise': 64}, 'batch_sise', 'did you mean batch_size'),
    ({'optim.nesterov': 'yes'}, 'optim.nesterov', 'expected a bool'),
    ({'batch_size': 100}, 'batch_size', 'multiple of 8'),
    ({'optim.base_lr': 0.0}, 'optim.base_lr', 'learning rate > 0'),
    ({'optim.base_lr': -1.0}, 'optim.base_lr', 'learning rate > 0'),
    ({'model.name': 'resnet_51'}, 'model.name', 'did you mean'),
    ({'data.name': 'digitz'}, 'data.name', 'did you mean digits'),
    ({'optim.schedule': 'cosin'}, 'optim.schedule', 'one of'),
    ({'eval_shift': -1}, 'eval_shift', r'pixels in \[0, '),
])
def test_mistakes_name_field_value_and_fix(changes, field, message):
  with pytest.raises(ConfigError, match=message) as error:
    validate_config(broken(**changes), num_devices=8)
  assert error.value.field == field
  value = next(iter(changes.values()))
  assert f'config.{field}={value!r}' in str(error.value)
  assert 'Fix:' in str(error.value)


def test_tfds_names_are_accepted():
  validate_config(broken(**{'data.name': 'cifar10'}), num_devices=8)


def test_degradation_study_config_takes_the_network_after_a_colon():
  from resnet_jax import config_validation
  module = importlib.import_module('configs.fashion_mnist_degradation')
  for model in module.MODELS:
    config = module.get_config(model)
    config_validation.validate_config(config, num_devices=4)
    assert config.model.name == model and config.optim.label_smoothing == 0
  with pytest.raises(ValueError, match='compares'):
    module.get_config('resnet50')
