"""Trainer tests: global-batch BN over 8 devices, overfitting, accumulation, exact eval, loop."""

import dataclasses
import json
import os
import types

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import config_validation, evaluation, optim, parallel, steps, train
from resnet_jax.models import create_model

# ---- in-memory stand-in for resnet_jax.data (same API, tiny learnable data) ---------------

@dataclasses.dataclass
class Info:
  num_classes: int
  num_examples: dict
  image_shape: tuple
  class_names: tuple = ()
  mean: tuple = ()
  std: tuple = ()


def make_split(num_examples: int, image_shape: tuple, num_classes: int, seed: int):
  """Images = a class-specific pattern + noise, so a small net can learn them."""
  rng = np.random.default_rng(seed)
  patterns = np.random.default_rng(1234).normal(size=(num_classes, *image_shape))
  labels = rng.integers(0, num_classes, num_examples).astype(np.int32)
  images = patterns[labels] + 0.3 * rng.normal(size=(num_examples, *image_shape))
  return images.astype(np.float32), labels


def eval_batches(images, labels, global_batch_size, process_index=0, process_count=1):
  """Fixed-size padded batches with 'mask'; each example exactly once across processes."""
  b = global_batch_size // process_count
  num_batches = -(-len(labels) // global_batch_size)
  for i in range(num_batches):
    start = i * global_batch_size + process_index * b
    idx = np.arange(start, start + b)
    mask = idx < len(labels)
    idx = np.where(mask, idx, 0)
    yield {'image': images[idx], 'label': labels[idx], 'mask': mask}


def fake_data_module(num_train=96, num_eval=40, image_shape=(8, 8, 3), num_classes=10):
  """A namespace with dataset_info / create_train_iterator / create_eval_iterator."""
  train = make_split(num_train, image_shape, num_classes, seed=0)
  evals = make_split(num_eval, image_shape, num_classes, seed=1)
  info = Info(num_classes, {'train': num_train, 'test': num_eval}, image_shape)

  def create_train_iterator(config, *, seed, global_batch_size, process_index, process_count):
    del config
    images, labels = train
    ds = (grain.MapDataset.range(num_train).shuffle(seed=seed).repeat()
          .map(lambda i: {'image': images[i], 'label': labels[i]})
          .batch(global_batch_size // process_count, drop_remainder=True))
    return iter(ds.to_iter_dataset())

  def create_eval_iterator(config, split=None, *, global_batch_size, process_index,
                           process_count):
    del config, split
    return eval_batches(*evals, global_batch_size, process_index, process_count)

  return types.SimpleNamespace(dataset_info=lambda config: info,
                               create_train_iterator=create_train_iterator,
                               create_eval_iterator=create_eval_iterator)


# ---- helpers -------------------------------------------------------------------------------



def tiny_config(**overrides):
  config = config_validation.default_config()
  config.model.name = 'resnet_tiny'
  config.batch_size = 16
  config.total_steps = 4
  config.log_every_steps = 2
  config.eval_every_steps = 0
  config.checkpoint.every_steps = 2
  config.data.image_size = 8
  config.log.progress_bar = False
  config.optim.base_lr = 0.05
  config.optim.lr_batch_base = 16
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split('.')
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config


def tiny_setup(mesh, image_shape=(8, 8, 3), schedule=0.1, **optim_overrides):
  config = tiny_config(**{f'optim.{k}': v for k, v in optim_overrides.items()})
  model = create_model('resnet_tiny', num_classes=10, zero_init_residual=False)
  tx = optim.create_optimizer(config.optim, optax.constant_schedule(schedule))
  state = steps.create_train_state(model, tx, jax.random.PRNGKey(0), image_shape, mesh)
  return model, tx, state


def batch_of(n, image_shape=(8, 8, 3), seed=0):
  images, labels = make_split(n, image_shape, 10, seed)
  return {'image': images, 'label': labels}


def test_global_batchnorm_8_devices_equals_1():
  assert jax.device_count() == 8
  local = batch_of(32)
  results = []
  for devices in (jax.devices(), jax.devices()[:1]):
    mesh = parallel.create_mesh(devices)
    model, tx, state = tiny_setup(mesh)
    batch = parallel.global_batch(mesh, local)
    grads_fn = jax.jit(steps.compute_gradients, static_argnums=(0, 5))
    grads, (losses, _, stats) = grads_fn(model, state.params, state.batch_stats, batch,
                                         jax.random.PRNGKey(1), 0.0)
    results.append(jax.device_get((losses.mean(), grads, stats)))
  (loss8, grads8, stats8), (loss1, grads1, stats1) = results
  np.testing.assert_allclose(loss8, loss1, atol=1e-5, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
               (grads8, stats8), (grads1, stats1))
  # The running mean moved: statistics really came from the batch, not the init.
  assert any(np.abs(x).max() > 0 for x in jax.tree.leaves(stats8))


def test_init_values_equal_those_compiled_at_xla_defaults():
  # create_train_state compiles init at LLVM's O1 on CPU (faster to compile): the parameters
  # must be those of XLA's default level, bit for bit (kernels normal, the head uniform).
  mesh = parallel.create_mesh(jax.devices()[:1])
  model = create_model('resnet_tiny', num_classes=10, zero_init_residual=False)
  state = steps.create_train_state(model, optax.sgd(0.1), jax.random.key(3), (8, 8, 3), mesh)
  reference = jax.jit(lambda rng: model.init(
    {'params': jax.random.split(rng)[0]}, jnp.zeros((1, 8, 8, 3)), train=False))(
    jax.random.key(3))
  jax.tree.map(np.testing.assert_array_equal, state.params, reference['params'])
  jax.tree.map(np.testing.assert_array_equal, state.batch_stats, reference['batch_stats'])


def test_train_step_same_update_on_8_and_1_devices():
  local = batch_of(16)
  params = []
  for devices in (jax.devices(), jax.devices()[:1]):
    mesh = parallel.create_mesh(devices)
    model, tx, state = tiny_setup(mesh)
    step = steps.create_train_step(model, tx, mesh)
    metrics = parallel.replicate(mesh, steps.zero_train_metrics())
    state, metrics = step(state, metrics, parallel.global_batch(mesh, local))
    params.append(jax.device_get((state.params, state.batch_stats, metrics['loss'])))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), *params)


def test_loss_falls_when_overfitting_one_batch():
  mesh = parallel.create_mesh()
  model, tx, state = tiny_setup(mesh, schedule=0.05)
  step = steps.create_train_step(model, tx, mesh)
  batch = parallel.global_batch(mesh, batch_of(16))
  losses = []
  for _ in range(25):
    metrics = parallel.replicate(mesh, steps.zero_train_metrics())
    state, metrics = step(state, metrics, batch)
    losses.append(float(metrics['loss']) / 16)
  assert losses[-1] < 0.5 * losses[0], losses


class _DenseNet(nn.Module):
  """BN-free net: with no batch statistics, k micro-batches must equal one big batch exactly."""

  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(10)(nn.tanh(nn.Dense(32)(x)))


def test_gradient_accumulation_equals_big_batch():
  mesh = parallel.create_mesh()
  model = _DenseNet()
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))['params']
  params = parallel.replicate(mesh, params)
  batch = parallel.global_batch(mesh, batch_of(64))

  def grads(params, batch, k):
    return steps.accumulate_gradients(model, params, {}, batch, jax.random.PRNGKey(0), 0.1, k)

  grads = jax.jit(grads, static_argnums=2)
  big = grads(params, batch, 1)
  for k in (2, 4):
    acc = grads(params, batch, k)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), acc, big)


def test_eval_counts_1003_examples_exactly_once_on_8_devices():
  mesh = parallel.create_mesh()
  model, _, state = tiny_setup(mesh)
  images, labels = make_split(1003, (8, 8, 3), 10, seed=3)
  eval_fn = evaluation.create_eval_step(model, mesh)
  variable_sets = evaluation.eval_variable_sets(state)
  results = evaluation.evaluate(eval_fn, variable_sets,
                           eval_batches(images, labels, 64), mesh, 1003)
  assert results['eval/count'] == 1003  # 1003 = 15 * 64 + 43: a padded last batch.
  logits = model.apply(jax.device_get(variable_sets['']), images, train=False)
  top1 = np.mean(np.argmax(logits, -1) == labels)
  loss = np.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  np.testing.assert_allclose(results['eval/top1'], top1, atol=1e-6)
  np.testing.assert_allclose(results['eval/loss'], loss, rtol=1e-4)
  with pytest.raises(RuntimeError, match='counted 1003 examples but the split has 1000'):
    evaluation.evaluate(eval_fn, variable_sets, eval_batches(images, labels, 64), mesh,
                   1000)


def test_flip_tta_averages_the_probabilities_of_image_and_mirror():
  mesh = parallel.create_mesh()
  model, _, state = tiny_setup(mesh)
  images, labels = make_split(64, (8, 8, 3), 10, seed=4)
  variables = jax.device_get(evaluation.eval_variable_sets(state)[''])
  probs = (jax.nn.softmax(model.apply(variables, images, train=False))
           + jax.nn.softmax(model.apply(variables, images[:, :, ::-1], train=False))) / 2
  got = evaluation.predict_log_probs(model, variables, images, flip=True)
  np.testing.assert_allclose(np.exp(got), probs, rtol=1e-5, atol=1e-7)
  assert not np.allclose(got, evaluation.predict_log_probs(model, variables, images))
  results = evaluation.evaluate(
      evaluation.create_eval_step(model, mesh, flip=True), evaluation.eval_variable_sets(state),
      eval_batches(images, labels, 32), mesh, 64)
  np.testing.assert_allclose(results['eval/top1'], np.mean(probs.argmax(-1) == labels), atol=1e-6)
  np.testing.assert_allclose(results['eval/loss'],
                             -np.mean(np.log(probs[np.arange(64), labels])), rtol=1e-4)


def test_translated_views_fill_their_border_as_training_pads():
  images = np.arange(2 * 4 * 5 * 3, dtype=np.float32).reshape(2, 4, 5, 3)
  fill = np.array([-1.0, -2.0, -3.0], np.float32)
  padded = np.broadcast_to(fill, (2, 6, 9, 3)).copy()
  padded[:, 1:5, 2:7] = images  # 1 px of fill above and below, 2 px left and right.
  for dy, dx in ((1, 0), (-1, 0), (0, 2), (0, -2), (1, -2)):
    # Moved down by dy, right by dx: the window of the padded image dy higher, dx further left.
    want = padded[:, 1 - dy:5 - dy, 2 - dx:7 - dx]
    np.testing.assert_array_equal(evaluation.translate(jnp.asarray(images), dy, dx, fill), want)
  views = evaluation.tta_views(jnp.asarray(images), flip=True, shift=1, fill=fill)
  assert len(views) == 10
  np.testing.assert_array_equal(views[6], np.asarray(views[1])[:, :, ::-1])
  assert len(evaluation.tta_views(jnp.asarray(images), shift=2)) == 5


def test_shift_tta_on_device_normalised_pixels_equals_shifting_the_raw_pixels():
  # uint8 batches normalised inside the step, border filled with a normalised black pixel, are
  # the same views as black-padded raw images normalised on the host (how training pads).
  from resnet_jax.data.processing import normalize_pixels

  mesh = parallel.create_mesh()
  model, _, state = tiny_setup(mesh)
  rng = np.random.default_rng(5)
  raw = rng.integers(1, 256, (32, 8, 8, 3)).astype(np.uint8)
  labels = rng.integers(0, 10, 32).astype(np.int32)
  mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
  fill = normalize_pixels(np.zeros(3, np.uint8), mean, std)
  variables = jax.device_get(evaluation.eval_variable_sets(state)[''])
  probs = 0
  for dy, dx in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)):
    moved = np.zeros_like(raw)
    moved[:, max(dy, 0):8 + min(dy, 0), max(dx, 0):8 + min(dx, 0)] = (
        raw[:, max(-dy, 0):8 - max(dy, 0), max(-dx, 0):8 - max(dx, 0)])
    for view in (moved, moved[:, :, ::-1]):
      probs = probs + jax.nn.softmax(model.apply(variables, normalize_pixels(view, mean, std),
                                                 train=False)) / 10
  eval_fn = evaluation.create_eval_step(model, mesh, (mean, std), flip=True, shift=1, fill=fill)
  results = evaluation.evaluate(eval_fn, evaluation.eval_variable_sets(state),
                                eval_batches(raw, labels, 16), mesh, 32)
  np.testing.assert_allclose(results['eval/loss'],
                             -np.mean(np.log(probs[np.arange(32), labels])), rtol=1e-5)
  np.testing.assert_allclose(results['eval/top1'], np.mean(probs.argmax(-1) == labels), atol=1e-6)
  # The shifted views change the prediction (the test would pass vacuously otherwise).
  flip_only = evaluation.evaluate(evaluation.create_eval_step(model, mesh, (mean, std), flip=True),
                                  evaluation.eval_variable_sets(state),
                                  eval_batches(raw, labels, 16), mesh, 32)
  assert flip_only['eval/loss'] != pytest.approx(results['eval/loss'], rel=1e-4)


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_train_and_evaluate_logs_checkpoints_and_resumes(tmp_path, monkeypatch):
  monkeypatch.setattr(train, 'data', fake_data_module())
  workdir = str(tmp_path)
  results = train.train_and_evaluate(tiny_config(**{'optim.ema_decay': 0.9}), workdir)
  assert results['eval/count'] == 40 and results['eval_ema/count'] == 40
  rows = _read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  assert [r['step'] for r in rows if 'train/loss' in r] == [2, 4]
  assert {'train/loss', 'train/top1', 'lr', 'images_per_sec'} <= set(rows[0])
  assert {'eval/loss', 'eval/top1', 'eval/top5', 'eval_ema/top1'} <= set(rows[-1])
  assert json.load(open(os.path.join(workdir, 'config.json')))['model']['name'] == 'resnet_tiny'
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  assert os.listdir(os.path.join(workdir, 'tensorboard'))

  # Same command with a longer run: resumes at step 4 instead of starting again.
  train.train_and_evaluate(tiny_config(**{'optim.ema_decay': 0.9, 'total_steps': 6}), workdir)
  rows = _read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  assert [r['step'] for r in rows if 'train/loss' in r] == [2, 4, 6]


def test_non_finite_loss_names_the_steps(tmp_path, monkeypatch):
  fake = fake_data_module()
  make = fake.create_train_iterator

  def nan_batches(*args, **kwargs):
    for batch in make(*args, **kwargs):
      yield {**batch, 'image': np.full_like(batch['image'], np.nan)}

  fake.create_train_iterator = lambda *a, **k: nan_batches(*a, **k)
  monkeypatch.setattr(train, 'data', fake)
  # Checkpoints are only every 100 steps: the generator stand-in has no iterator state to save.
  config = tiny_config(**{'checkpoint.every_steps': 100, 'total_steps': 2})
  with pytest.raises(FloatingPointError, match='steps 1..2'):
    train.train_and_evaluate(config, str(tmp_path))


# ---- real input pipeline under tfds.testing.mock_data --------------------------------------


@pytest.mark.parametrize('name, eval_split, image_size, augment', [
    ('imagenet2012', 'validation', 16, 'imagenet'),  # ImageNet-shaped: 1000 classes.
    ('cifar10', 'test', 32, 'cifar'),  # CIFAR-shaped: 32x32x3, 10 classes.
])
def test_train_and_evaluate_under_tfds_mock_data(tmp_path, name, eval_split, image_size, augment):
  tfds = pytest.importorskip('tensorflow_datasets')
  config = tiny_config(**{'data.name': name, 'data.eval_split': eval_split,
                          'data.image_size': image_size, 'data.augment': augment,
                          'total_steps': 3, 'log_every_steps': 1, 'checkpoint.every_steps': 2})
  config_validation.validate_config(config, num_devices=jax.device_count())
  with tfds.testing.mock_data(num_examples=21):  # 21: divides by neither batch nor devices.
    results = train.train_and_evaluate(config, str(tmp_path))
  assert results['eval/count'] == 21
  assert 0.0 <= results['eval/top1'] <= results['eval/top5'] <= 1.0
  rows = _read_jsonl(os.path.join(tmp_path, 'metrics.jsonl'))
  assert [r['step'] for r in rows if 'train/loss' in r] == [1, 2, 3]
  assert all(np.isfinite(r['train/loss']) for r in rows if 'train/loss' in r)
  assert sorted(os.listdir(os.path.join(tmp_path, 'checkpoints'))) == ['2', '3']


def test_bf16_compute_keeps_fp32_params_and_batch_stats():
  mesh = parallel.create_mesh()
  model = create_model('resnet_tiny', num_classes=10, dtype=jnp.bfloat16)
  config = tiny_config(**{'optim.label_smoothing': 0.1})
  tx = optim.create_optimizer(config.optim, optax.constant_schedule(0.1))
  state = steps.create_train_state(model, tx, jax.random.PRNGKey(0), (8, 8, 3), mesh)
  step = steps.create_train_step(model, tx, mesh, label_smoothing=0.1)
  metrics = parallel.replicate(mesh, steps.zero_train_metrics())
  state, metrics = step(state, metrics, parallel.global_batch(mesh, batch_of(16)))
  dtypes = {x.dtype for x in jax.tree.leaves((state.params, state.batch_stats))}
  assert dtypes == {jnp.dtype(jnp.float32)}
  momentum = {x.dtype for x in jax.tree.leaves(state.opt_state) if x.dtype != jnp.int32}
  assert momentum == {jnp.dtype(jnp.float32)}
  assert np.isfinite(float(metrics['loss']))


def test_uint8_batches_normalised_on_device_train_like_host_normalised(tmp_path):
  """data.host_normalize=False gives the same run as normalising on the host."""
  from resnet_jax import config_validation

  results = {}
  for host in (True, False):
    config = config_validation.default_config()
    config.model.name = 'resnet_tiny'
    config.data.name = 'digits'
    config.data.image_size = 8
    config.data.augment = 'none'
    config.data.host_normalize = host
    config.batch_size = 16
    config.total_steps = 3
    config.log_every_steps = 1
    config.log.progress_bar = False
    config.log.tensorboard = False
    config.compilation_cache_dir = ''
    results[host] = train.train_and_evaluate(config, str(tmp_path / f'host_{host}'))
  for key in ('eval/loss', 'eval/top1'):
    assert abs(results[True][key] - results[False][key]) < 1e-5, key


def test_grad_norm_equals_optax_and_lets_each_update_follow_its_gradient(monkeypatch):
  from tests.compiled_step import compiled_train_step
  rng = np.random.default_rng(0)
  grads = {'a': rng.normal(size=(3, 5)).astype(np.float32),
           'b': {'c': rng.normal(size=(7,)).astype(np.float32)}}
  params = {'a': np.full((3, 5), np.inf, np.float32), 'b': {'c': np.ones(7, np.float32)}}
  # Exact, whatever the parameters hold (an infinite one included).
  assert steps.norm_after_update(grads, params) == optax.tree.norm(grads)

  # What the ordering is for, on the compiled one-device step: with the norm read straight from
  # the gradients, every gradient stayed live until the last one existed.
  def temp_bytes():
    compiled, _ = compiled_train_step(1, 'resnet18', batch=2, size=64, num_classes=10)
    return compiled.memory_analysis().temp_size_in_bytes

  ordered = temp_bytes()
  monkeypatch.setattr(steps, 'norm_after_update', lambda grads, params: optax.tree.norm(grads))
  unordered = temp_bytes()
  assert ordered < 0.9 * unordered, (ordered, unordered)
