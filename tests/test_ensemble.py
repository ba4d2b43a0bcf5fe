"""resnet_jax.ensemble: members reproduce their runs' eval, the ensemble averages probabilities."""

import json
import os

import numpy as np
import pytest

from resnet_jax import ensemble


def _digits_run(workdir, seed):
  from configs import digits
  from resnet_jax import train
  config = digits.get_config()
  config.model.name = 'resnet_tiny'
  config.seed = seed
  config.total_steps = 30
  config.log_every_steps = 10
  config.log.tensorboard = False
  config.log.progress_bar = False
  return train.train_and_evaluate(config, str(workdir))


@pytest.fixture(scope='module')
def two_runs(tmp_path_factory):
  a, b = tmp_path_factory.mktemp('run_a'), tmp_path_factory.mktemp('run_b')
  return (str(a), _digits_run(a, 0)), (str(b), _digits_run(b, 1))


def test_members_reproduce_their_runs_and_ensemble_is_reported(two_runs, tmp_path, capsys):
  (a, results_a), (b, results_b) = two_runs
  out = ensemble.evaluate([a, b])
  assert out['count'] == results_a['eval/count'] == 296
  np.testing.assert_allclose(out['members'][a], results_a['eval/top1'], atol=1e-6)
  np.testing.assert_allclose(out['members'][b], results_b['eval/top1'], atol=1e-6)
  assert 0 < out['ensemble'] <= 1
  # An ensemble of one run with itself is that run.
  assert ensemble.evaluate([a, a])['ensemble'] == pytest.approx(results_a['eval/top1'], abs=1e-6)
  path = tmp_path / 'e.json'
  assert ensemble.main([a, b, '--flip', '--json', str(path)]) == 0
  assert 'ensemble of 2' in capsys.readouterr().out
  assert json.loads(path.read_text())['flip'] is True
  assert ensemble.main([a, '--shift', '1', '--json', str(path)]) == 0
  assert '(TTA: 1 px shifts)' in capsys.readouterr().out
  assert json.loads(path.read_text())['shift'] == 1
  assert ensemble.main([a, '--shift', '1000']) == 2
  assert '--shift 1000: expected pixels in [0, ' in capsys.readouterr().err


def test_runs_on_different_data_are_refused(two_runs, tmp_path, capsys):
  (a, _), _ = two_runs
  other = tmp_path / 'other'
  os.makedirs(other / 'checkpoints')
  os.symlink(os.path.join(a, 'checkpoints', sorted(os.listdir(os.path.join(a, 'checkpoints')))[-1]),
             other / 'checkpoints' / '30')
  config = json.loads(open(os.path.join(a, 'config.json')).read())
  config['data']['image_size'] = 16
  (other / 'config.json').write_text(json.dumps(config))
  assert ensemble.main([a, str(other)]) == 2
  assert "data.image_size=16 but the first run has 8" in capsys.readouterr().err
