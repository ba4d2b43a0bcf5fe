"""LR schedules, weight-decay masks and modes, EMA."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import config_validation, optim


def optim_config(**overrides):
  config = config_validation.default_config().optim
  config.update(overrides)
  return config


def test_linear_scaling_rule():
  assert optim.peak_learning_rate(optim_config(base_lr=0.1, lr_batch_base=256), 1024) == 0.4


def test_warmup_then_cosine():
  cfg = optim_config(base_lr=0.1, lr_batch_base=256, warmup_epochs=5.0, schedule='cosine')
  schedule = optim.create_lr_schedule(cfg, 1024, steps_per_epoch=10, total_steps=100)
  np.testing.assert_allclose(schedule(0), 0.0)
  np.testing.assert_allclose(schedule(25), 0.2, rtol=1e-6)  # Halfway through warm-up.
  np.testing.assert_allclose(schedule(50), 0.4, rtol=1e-6)  # Peak.
  np.testing.assert_allclose(schedule(75), 0.2, rtol=1e-5)  # Halfway down the cosine.
  assert float(schedule(100)) < 1e-6


def test_multistep_counts_boundaries_from_step_zero():
  cfg = optim_config(base_lr=0.1, lr_batch_base=128, schedule='multistep',
                     decay_boundaries_steps=(32_000, 48_000))
  schedule = optim.create_lr_schedule(cfg, 128, steps_per_epoch=391, total_steps=64_000)
  for step, lr in ((0, 0.1), (31_999, 0.1), (32_000, 0.01), (47_999, 0.01), (48_000, 0.001)):
    np.testing.assert_allclose(schedule(step), lr, rtol=1e-5, err_msg=f'step {step}')


def test_resnet110_constant_warmup():
  cfg = optim_config(base_lr=0.1, lr_batch_base=128, schedule='multistep', warmup_steps=400,
                     warmup_init_lr=0.01, warmup_mode='constant',
                     decay_boundaries_steps=(32_000, 48_000))
  schedule = optim.create_lr_schedule(cfg, 128, steps_per_epoch=391, total_steps=64_000)
  for step, lr in ((0, 0.01), (399, 0.01), (400, 0.1), (32_000, 0.01)):
    np.testing.assert_allclose(schedule(step), lr, rtol=1e-5, err_msg=f'step {step}')


def test_epoch_boundaries_torchvision():
  cfg = optim_config(base_lr=0.1, lr_batch_base=256, schedule='multistep',
                     decay_boundaries_epochs=(30.0, 60.0, 80.0))
  schedule = optim.create_lr_schedule(cfg, 256, steps_per_epoch=10, total_steps=900)
  np.testing.assert_allclose([schedule(s) for s in (299, 300, 600, 800)],
                             [0.1, 0.01, 0.001, 0.0001], rtol=1e-5)


PARAMS = {'conv': {'kernel': jnp.ones((3, 3, 1, 2))}, 'bn': {'scale': jnp.ones(2),
                                                            'bias': jnp.ones(2)},
          'fc': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)}}


def test_weight_decay_mask_excludes_bn_and_bias():
  mask = optim.weight_decay_mask(PARAMS, ('bias', 'scale'))
  assert mask == {'conv': {'kernel': True}, 'bn': {'scale': False, 'bias': False},
                  'fc': {'kernel': True, 'bias': False}}
  assert all(jnp.all(v) for v in jax.tree.leaves(optim.weight_decay_mask(PARAMS, ())))


@pytest.mark.parametrize('mode', ['coupled', 'decoupled'])
def test_weight_decay_modes(mode):
  # Zero gradient isolates the decay. Step 1: both give -lr*wd*w. Step 2 differs: coupled decay
  # went through momentum (m = 0.9*wd*w + wd*w), decoupled did not.
  cfg = optim_config(weight_decay=0.1, weight_decay_mode=mode, momentum=0.9, nesterov=False,
                     weight_decay_exclude=('bias', 'scale'))
  tx = optim.create_optimizer(cfg, optax.constant_schedule(0.5))
  params = PARAMS
  opt_state = tx.init(params)
  grads = optax.tree.zeros_like(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  np.testing.assert_allclose(updates['fc']['kernel'], -0.5 * 0.1, rtol=1e-6)
  np.testing.assert_allclose(updates['fc']['bias'], 0.0)
  np.testing.assert_allclose(updates['bn']['scale'], 0.0)
  updates, _ = tx.update(grads, opt_state, params)
  expected = -0.5 * 0.1 * (1.9 if mode == 'coupled' else 1.0)
  np.testing.assert_allclose(updates['conv']['kernel'], expected, rtol=1e-6)


def test_ema_update():
  ema = optim.ema_update({'w': jnp.zeros(2)}, {'w': jnp.ones(2)}, decay=0.9)
  np.testing.assert_allclose(ema['w'], 0.1, rtol=1e-6)


def test_num_train_steps():
  config = config_validation.default_config()
  config.batch_size, config.num_epochs = 128, 2.0
  assert optim.num_train_steps(config, 1000) == 16  # ceil(2000 / 128).
  config.total_steps = 7
  assert optim.num_train_steps(config, 1000) == 7
