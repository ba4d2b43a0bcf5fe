"""Progressive resizing: the schedule's parsing and steps, the on-device resize, the loop."""

import json
import os

import jax
import numpy as np
import optax
import pytest
from PIL import Image

from resnet_jax import config_validation, data, optim, parallel, progressive, steps, train
from resnet_jax.models import create_model


def test_parse_reads_sizes_from_epochs_in_order():
  assert progressive.parse('') == ()
  assert progressive.parse('20:0, 24:8.5,28:14') == ((0.0, 20), (8.5, 24), (14.0, 28))


@pytest.mark.parametrize('text, message', [
    ('20', 'not SIZE:EPOCH'),
    ('20:x', 'not SIZE:EPOCH'),
    ('0:0', 'size >= 1'),
    ('20:-1', 'epoch >= 0'),
    ('20:0,24:5,28:5', 'does not come after 5'),
])
def test_bad_schedules_name_the_field_and_the_entry(text, message):
  config = config_validation.default_config()
  config.data.resize_schedule = text
  with pytest.raises(config_validation.ConfigError, match=message) as error:
    config_validation.validate_config(config)
  assert error.value.field == 'data.resize_schedule'


def test_sizes_by_step_index():
  boundaries = progressive.step_boundaries(progressive.parse('16:0,24:1.5,32:3'), 32, 10.0)
  assert boundaries == ((0, 15, 30), (16, 24, 32))
  sizes = [progressive.size_at(boundaries, i) for i in range(35)]
  assert sizes == [16] * 15 + [24] * 15 + [32] * 5
  # Before the first entry the run trains at image_size; without a schedule, always.
  late = progressive.step_boundaries(progressive.parse('16:2'), 32, 10.0)
  assert [progressive.size_at(late, i) for i in (0, 19, 20, 99)] == [32, 32, 16, 16]
  assert progressive.size_at(progressive.step_boundaries((), 32, 10.0), 10**6) == 32


@pytest.mark.parametrize('size', [24, 20, 14])
def test_resize_matches_pillows_antialiased_bilinear(size):
  """The reference of antialiased downscaling: PIL's BILINEAR widens its triangle filter by the
  scale, so every input pixel counts (plain bilinear sampling would alias)."""
  images = np.random.default_rng(0).normal(size=(2, 28, 28, 3)).astype(np.float32)
  assert progressive.resize_images(images, 28) is images
  small = np.asarray(progressive.resize_images(images, size))
  assert small.shape == (2, size, size, 3)
  expected = np.stack([np.stack([
      np.asarray(Image.fromarray(image[:, :, c], mode='F').resize((size, size), Image.BILINEAR))
      for c in range(3)], axis=-1) for image in images])
  np.testing.assert_allclose(small, expected, atol=1e-5)


def test_train_step_trains_on_the_resized_batch():
  """train_size=s gives the update of feeding s x s images; a different one from no resize."""
  mesh = parallel.create_mesh()
  model = create_model('resnet_tiny', num_classes=10, zero_init_residual=False)
  config = config_validation.default_config()
  tx = optim.create_optimizer(config.optim, optax.constant_schedule(0.1))
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(16, 8, 8, 3)).astype(np.float32),
           'label': rng.integers(0, 10, 16).astype(np.int32)}
  resized = {**batch, 'image': np.asarray(progressive.resize_images(batch['image'], 6))}
  results = []
  for train_size, fed in ((6, batch), (None, resized), (None, batch)):
    state = steps.create_train_state(model, tx, jax.random.PRNGKey(0), (8, 8, 3), mesh)
    step = steps.create_train_step(model, tx, mesh, train_size=train_size)
    metrics = parallel.replicate(mesh, steps.zero_train_metrics())
    state, metrics = step(state, metrics, parallel.global_batch(mesh, fed))
    results.append(jax.device_get((state.params, state.batch_stats, metrics['loss'])))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6),
               results[0], results[1])
  assert not np.isclose(results[0][2], results[2][2])


def _image_sizes(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return [r['train/image_size'] for r in rows if 'train/loss' in r]


def test_loop_switches_size_at_the_epoch_and_a_resume_keeps_the_schedule(tmp_path):
  config = config_validation.default_config()
  config.model.name = 'resnet_tiny'
  config.data.name = 'digits'
  config.data.image_size = 8
  config.data.augment = 'none'
  config.batch_size = 16
  config.log_every_steps = 1
  config.log.progress_bar = False
  config.log.tensorboard = False
  config.compilation_cache_dir = ''
  steps_per_epoch = data.dataset_info(config.data).num_examples['train'] / config.batch_size
  # 6 x 6 for the first 4 updates, then 8 x 8 (the eval size).
  config.data.resize_schedule = f'6:0,8:{4 / steps_per_epoch!r}'
  config_validation.validate_config(config)
  workdir = str(tmp_path)
  config.total_steps = 2
  train.train_and_evaluate(config, workdir)
  assert _image_sizes(workdir) == [6, 6]
  config.total_steps = 5  # Resumes at step 2, inside the 6 x 6 phase.
  results = train.train_and_evaluate(config, workdir)
  assert _image_sizes(workdir) == [6, 6, 6, 6, 8]
  assert results['eval/count'] == data.dataset_info(config.data).num_examples['test']
