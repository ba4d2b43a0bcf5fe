"""Checkpoint helpers in-process: shape errors, fine-tune weights (ours and torchvision's), the
skip policy's untouched state. End-to-end behaviour is in tests/test_fault_tolerance.py."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from resnet_jax import checkpoint, optim, parallel, steps, warm_start
from resnet_jax.interop import torchvision
from resnet_jax.models import create_model


def _state(num_classes: int, mesh, seed: int = 0):
  model = create_model('resnet_tiny', num_classes=num_classes, zero_init_residual=False)
  config = ml_collections.ConfigDict({'name': 'resnet_tiny'})
  tx = optim.create_optimizer(_optim_config(), optax.constant_schedule(0.1))
  state = steps.create_train_state(model, tx, jax.random.PRNGKey(seed), (8, 8, 3), mesh)
  return model, tx, state, config


def _optim_config():
  from resnet_jax import config_validation
  return config_validation.default_config().optim


def test_check_shapes_names_parameter_and_both_shapes():
  with pytest.raises(checkpoint.ShapeMismatchError) as e:
    checkpoint.check_shapes({'params/fc/kernel': (16, 10), 'params/conv1/kernel': (3, 3, 3, 8)},
                            {'params/fc/kernel': (16, 5), 'params/conv1/kernel': (3, 3, 3, 8),
                             'params/extra/bias': (4,)}, 'checkpoint /x/6')
  message = str(e.value)
  assert 'params/fc/kernel: checkpoint (16, 10), model (16, 5)' in message
  assert 'params/extra/bias: not in the checkpoint' in message
  assert 'conv1' not in message and 'init_checkpoint' in message


def test_fine_tune_from_torchvision_file_reinitialises_only_the_head(tmp_path):
  mesh = parallel.create_mesh()
  _, _, source, _ = _state(10, mesh, seed=1)
  path = str(tmp_path / 'weights.safetensors')
  from safetensors.numpy import save_file
  tv = torchvision.to_torchvision(
      {'params': source.params, 'batch_stats': source.batch_stats}, 'resnet_tiny', as_torch=False)
  save_file({k: np.ascontiguousarray(v) for k, v in tv.items()}, path)

  _, _, fresh, config = _state(5, mesh, seed=0)
  loaded = warm_start.load_init_weights(path, config, mesh)
  merged = warm_start.merge_init_weights(fresh, loaded, path)
  np.testing.assert_array_equal(merged.params['conv1']['kernel'], source.params['conv1']['kernel'])
  np.testing.assert_array_equal(merged.batch_stats['bn1']['mean'],
                                source.batch_stats['bn1']['mean'])
  np.testing.assert_array_equal(merged.params['fc']['kernel'], fresh.params['fc']['kernel'])
  assert merged.params['fc']['kernel'].shape[-1] == 5


def test_fine_tune_refuses_another_architecture():
  mesh = parallel.create_mesh()
  _, _, fresh, _ = _state(10, mesh)
  loaded = {'params': jax.tree.map(np.asarray, fresh.params),
            'batch_stats': jax.tree.map(np.asarray, fresh.batch_stats)}
  loaded['params']['conv1']['kernel'] = np.zeros((5, 5, 3, 8), np.float32)
  with pytest.raises(checkpoint.ShapeMismatchError, match=r'params/conv1/kernel: checkpoint '
                     r'\(5, 5, 3, 8\), model \(3, 3, 3, \d+\)'):
    warm_start.merge_init_weights(fresh, loaded, 'other.safetensors')


def test_resolve_step_dir_accepts_workdir_checkpoints_dir_and_step_dir(tmp_path):
  for step in (3, 12):
    (tmp_path / 'checkpoints' / str(step) / 'state').mkdir(parents=True)
  (tmp_path / 'checkpoints' / '15.orbax-checkpoint-tmp-1').mkdir()
  want = str(tmp_path / 'checkpoints' / '12')
  assert checkpoint.resolve_step_dir(str(tmp_path)) == want
  assert checkpoint.resolve_step_dir(str(tmp_path / 'checkpoints')) == want
  assert checkpoint.resolve_step_dir(str(tmp_path / 'checkpoints' / '3')).endswith('/3')
  with pytest.raises(FileNotFoundError, match='init_checkpoint='):
    checkpoint.resolve_step_dir(str(tmp_path / 'nothing'))


def test_skip_policy_leaves_params_opt_state_and_batch_stats_unchanged():
  mesh = parallel.create_mesh()
  model, tx, state, _ = _state(10, mesh)
  step = steps.create_train_step(model, tx, mesh, skip_nonfinite=True)
  rng = np.random.default_rng(0)
  good = {'image': rng.normal(size=(8, 8, 8, 3)).astype(np.float32),
          'label': rng.integers(0, 10, 8).astype(np.int32)}
  bad = {**good, 'image': np.full_like(good['image'], np.nan)}
  metrics = parallel.replicate(mesh, steps.zero_train_metrics())
  state, metrics = step(state, metrics, parallel.global_batch(mesh, good))
  before = jax.device_get(state)
  for _ in range(2):
    state, metrics = step(state, metrics, parallel.global_batch(mesh, bad))
  after = jax.device_get(state)
  for name in ('params', 'batch_stats', 'opt_state'):
    jax.tree.map(np.testing.assert_array_equal, getattr(before, name), getattr(after, name))
  assert int(after.step) == 3
  fetched = jax.device_get(metrics)
  assert fetched['skipped'] == 2 and fetched['skip_run'] == 2 and fetched['max_skip_run'] == 2
  assert fetched['steps'] == 1 and np.isfinite(fetched['loss'])
  state, metrics = step(state, metrics, parallel.global_batch(mesh, good))
  assert jax.device_get(metrics)['skip_run'] == 0  # A good step ends the run of skips.
  assert not jnp.array_equal(state.params['fc']['kernel'], after.params['fc']['kernel'])
