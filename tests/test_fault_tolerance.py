"""Fault tolerance, end to end: every test drives real training subprocesses on CPU.

Runs are tiny (resnet_tiny, 8x8 fake images, batch 8, a few steps) and shared where one run
can serve several checks: the uninterrupted run of (a) also serves (e), (f), (g) and (h).
Letters follow the issue: (a) exact resume ... (j) unwritable workdir.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import fast_compile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(ROOT, 'tests', 'fault_injection.py')
TIMEOUT = 120  # Seconds per subprocess: a hang fails the test instead of the suite.

BASE = {
    'model.name': 'resnet_tiny', 'data.name': 'fake', 'data.fake_num_examples': 64,
    'data.image_size': 8, 'data.augment': 'none', 'batch_size': 8, 'total_steps': 6,
    'log_every_steps': 1, 'eval_every_steps': 2, 'checkpoint.every_steps': 1,
    'checkpoint.keep': 2, 'checkpoint.keep_best': 1, 'log.progress_bar': False,
    'log.tensorboard': False,
}


def _env(devices: int, **extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith('FT_')}
  env.update(JAX_PLATFORMS='cpu', TFDS_DISABLE_GCS='1', PYTHONUNBUFFERED='1',
             # Control flow under test, every run (and dump) compiled alike and fast
             # (tests/fast_compile.py).
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} {fast_compile.XLA_FLAG}')
  env.update({k: str(v) for k, v in extra.items()})
  return env


def _cmd(workdir, overrides) -> list[str]:
  args = [sys.executable, RUNNER, '--config=configs/default.py', f'--workdir={workdir}']
  return args + [f'--config.{k}={v}' for k, v in {**BASE, **overrides}.items()]


def run(workdir, devices=8, env=None, **overrides) -> subprocess.CompletedProcess:
  return subprocess.run(_cmd(workdir, overrides), cwd=ROOT, env=_env(devices, **(env or {})),
                        capture_output=True, text=True, timeout=TIMEOUT)


def start(workdir, devices=8, env=None, **overrides) -> subprocess.Popen:
  return subprocess.Popen(_cmd(workdir, overrides), cwd=ROOT, env=_env(devices, **(env or {})),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ok(result) -> subprocess.CompletedProcess:
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def losses(workdir) -> dict[int, float]:
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  return {r['step']: r['train/loss'] for r in rows if 'train/loss' in r}


def steps(workdir) -> list[int]:
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())


def leftovers(workdir) -> list[str]:
  return [n for n in os.listdir(os.path.join(workdir, 'checkpoints')) if 'tmp' in n]


def dump(step_dir, out, devices) -> dict[str, np.ndarray]:
  """The checkpoint's whole TrainState restored in a subprocess with `devices` devices."""
  ok(subprocess.run([sys.executable, RUNNER, '--dump', str(step_dir), str(out)], cwd=ROOT,
                    env=_env(devices), capture_output=True, text=True, timeout=TIMEOUT))
  return dict(np.load(out))


def assert_same(a: dict, b: dict, prefixes=('params', 'batch_stats')) -> None:
  names = [n for n in a if n.startswith(prefixes)]
  assert names and set(names) == {n for n in b if n.startswith(prefixes)}
  for n in names:
    np.testing.assert_array_equal(a[n], b[n], err_msg=n)


# ---- (a) uninterrupted reference run, shared ------------------------------------------------


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """6 uninterrupted steps on 8 devices: checkpoints every step, keep 2 + best 1."""
  workdir = tmp_path_factory.mktemp('reference')
  ok(run(workdir))
  return workdir


def _interrupted(workdir, **overrides):
  """3 steps, stop by SIGTERM (exit 0, checkpoint 3), then the same command to the end."""
  first = ok(run(workdir, env={'FT_SIGTERM_AT_STEP': 3}, **overrides))
  assert 'SIGTERM received: saved step 3' in first.stdout
  assert max(losses(workdir)) == 3
  second = ok(run(workdir, **overrides))
  assert 'Resuming from checkpoint step 3' in second.stderr
  return workdir


def test_a_exact_resume_equals_uninterrupted(reference, tmp_path):
  workdir = _interrupted(tmp_path / 'resumed')
  assert losses(workdir) == losses(reference)  # Every step, exactly (log_every_steps=1).
  assert_same(dump(reference / 'checkpoints/6', tmp_path / 'r.npz', 1),
              dump(workdir / 'checkpoints/6', tmp_path / 'i.npz', 1),
              prefixes=('params', 'batch_stats', 'opt_state', 'step', 'rng'))


def test_b_negative_control_without_data_state_fails_a(reference, tmp_path):
  # The same interruption, but the data position is not checkpointed: the resumed run sees the
  # first batches again. (a)'s loss comparison must notice, or (a) proves nothing.
  workdir = _interrupted(tmp_path / 'no_data_state', **{'checkpoint.save_data_state': False})
  got, want = losses(workdir), losses(reference)
  assert [got[s] for s in (1, 2, 3)] == [want[s] for s in (1, 2, 3)]
  assert [got[s] for s in (4, 5, 6)] != [want[s] for s in (4, 5, 6)]


# ---- (c) SIGTERM / SIGINT ------------------------------------------------------------------


def _signal_mid_training(workdir, sig, **overrides):
  """Starts a long run, waits for 3 logged steps, sends `sig`; returns (seconds to exit, step)."""
  proc = start(workdir, **{'total_steps': 100000, 'checkpoint.every_steps': 100000,
                           'eval_every_steps': 0, **overrides})
  metrics = os.path.join(workdir, 'metrics.jsonl')
  before = max(losses(workdir), default=0) if os.path.exists(metrics) else 0
  deadline = time.time() + TIMEOUT
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(metrics) and max(losses(workdir), default=0) >= before + 3:
      break
    time.sleep(0.2)
  t0 = time.time()
  proc.send_signal(sig)
  try:
    out, err = proc.communicate(timeout=60)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise
  seconds = time.time() - t0
  assert proc.returncode == 0, err[-3000:]
  step = max(losses(workdir))  # log_every_steps=1: the last logged step is the saved one.
  assert f'{signal.Signals(sig).name} received: saved step {step}' in out
  assert steps(workdir)[-1] == step and not leftovers(workdir)
  print(f'{signal.Signals(sig).name}: exit {seconds:.1f} s after the signal, step {step}')
  return seconds, step


def test_c_sigterm_and_sigint_save_and_exit_0_then_resume(tmp_path):
  workdir = tmp_path / 'signals'
  seconds, step = _signal_mid_training(workdir, signal.SIGTERM)
  assert seconds < 60
  seconds, step2 = _signal_mid_training(workdir, signal.SIGINT)  # Also resumes from `step`.
  assert seconds < 60 and step2 > step
  logged = sorted(losses(workdir))
  assert logged == list(range(1, step2 + 1))  # Resumed at step + 1: no step lost or repeated.
  result = ok(run(workdir, total_steps=step2 + 1, eval_every_steps=0))
  assert f'Resuming from checkpoint step {step2}' in result.stderr


# ---- (d) kill -9 during a checkpoint write -------------------------------------------------


def test_d_kill_9_mid_write_resumes_from_last_complete_step(tmp_path):
  workdir = tmp_path / 'killed'
  overrides = {'checkpoint.every_steps': 3, 'eval_every_steps': 0}
  proc = start(workdir, env={'FT_SLOW_FINALIZE': 6}, **overrides)
  deadline = time.time() + TIMEOUT
  for line in proc.stdout:  # Written, not yet renamed: the middle of the write.
    if line.startswith('FT finalizing 6') or time.time() > deadline:
      break
  assert any(n.startswith('6.') for n in leftovers(workdir)), os.listdir(workdir / 'checkpoints')
  proc.kill()  # SIGKILL: no handler, no cleanup.
  proc.wait(timeout=30)
  assert steps(workdir) == [3]
  result = ok(run(workdir, **overrides))
  assert 'Resuming from checkpoint step 3' in result.stderr
  assert steps(workdir) == [3, 6] and not leftovers(workdir)


# ---- (e) corrupt or truncated latest checkpoint --------------------------------------------


def _truncate_arrays(step_dir) -> None:
  """Halves every array-data file of a checkpoint (a copy cut short by a full disk)."""
  for d, _, files in os.walk(os.path.join(step_dir, 'state')):
    for f in files:
      if os.path.basename(d) == 'd':
        path = os.path.join(d, f)
        with open(path, 'r+b') as fh:
          fh.truncate(os.path.getsize(path) // 2)


def test_e_corrupt_latest_falls_back_and_none_valid_is_a_clear_error(reference, tmp_path):
  workdir = tmp_path / 'corrupt'
  shutil.copytree(reference, workdir)
  _truncate_arrays(workdir / 'checkpoints/6')
  result = ok(run(workdir))
  assert f'Checkpoint step 6 in {workdir}/checkpoints/6' in result.stderr
  assert 'Resuming from checkpoint step 5' in result.stderr
  # Steps 5 -> 6 are replayed exactly: the rewritten step 6 equals the reference's.
  assert losses(workdir)[6] == losses(reference)[6]

  assert os.path.isdir(workdir / 'checkpoints/6.corrupt')  # Kept for inspection, out of the way.

  none_valid = tmp_path / 'none_valid'
  shutil.copytree(reference, none_valid)
  saved = steps(none_valid)
  for step in saved:
    _truncate_arrays(none_valid / 'checkpoints' / str(step))
  with open(none_valid / 'checkpoints' / str(saved[0]) / 'state/_METADATA', 'w') as f:
    f.write('{not json')
  result = run(none_valid)
  assert result.returncode == 1
  # orbax's reader threads may print their own tracebacks; ours is one message at the end.
  start = result.stderr.index('error: no valid checkpoint in')
  error = result.stderr[start:result.stderr.index('run again to start fresh.', start)]
  for step in saved:
    assert f'step {step} ({none_valid}/checkpoints/{step})' in error
  assert 'Traceback' not in error


# ---- (f) restore on another device count ---------------------------------------------------


def test_f_saved_on_8_devices_restores_on_1_and_4(reference, tmp_path):
  on_1 = dump(reference / 'checkpoints/6', tmp_path / 'one.npz', 1)
  on_4 = dump(reference / 'checkpoints/6', tmp_path / 'four.npz', 4)
  on_8 = dump(reference / 'checkpoints/6', tmp_path / 'eight.npz', 8)
  assert_same(on_8, on_1, prefixes=('',))
  assert_same(on_8, on_4, prefixes=('',))
  # And the trainer resumes the 8-device run on 4 devices.
  workdir = tmp_path / 'on4'
  shutil.copytree(reference, workdir)
  result = ok(run(workdir, devices=4, total_steps=7))
  assert 'Resuming from checkpoint step 6' in result.stderr and 7 in losses(workdir)


# ---- (g) changed shapes outside fine-tuning ------------------------------------------------


def test_g_changed_num_classes_names_parameter_and_shapes(reference, tmp_path):
  workdir = tmp_path / 'classes'
  shutil.copytree(reference, workdir)
  result = run(workdir, **{'data.fake_num_classes': 5, 'total_steps': 7})
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert 'params/fc/kernel: checkpoint (16, 10), model (16, 5)' in result.stderr, result.stderr
  assert 'params/fc/bias: checkpoint (10,), model (5,)' in result.stderr


def test_g2_fine_tune_from_a_workdir_reinitialises_the_head(reference, tmp_path):
  result = ok(run(tmp_path / 'finetune', **{'data.fake_num_classes': 5, 'total_steps': 1,
                                            'init_checkpoint': str(reference),
                                            'eval_every_steps': 0}))
  assert f'starting from the weights in init_checkpoint={reference}' in result.stderr
  assert "the head 'fc' has another number of classes; it is re-initialised" in result.stderr
  assert 'params/fc/kernel (16, 10) -> (16, 5)' in result.stderr


# ---- (h) retention -------------------------------------------------------------------------


def test_h_keep_2_of_6_saves_plus_the_best(reference):
  rows = [json.loads(line) for line in open(reference / 'metrics.jsonl')]
  evals = [(r['eval/top1'], r['step']) for r in rows if 'eval/top1' in r]
  best = max(evals)[1]  # Ties keep the later step, as orbax's sort does.
  assert steps(reference) == sorted({5, 6, best})
  assert not leftovers(reference)


# ---- (i) NaN / Inf -------------------------------------------------------------------------


def test_i_nonfinite_stops_with_last_good_checkpoint_intact(tmp_path):
  workdir = tmp_path / 'nan_stop'
  # Logged every 3 steps, saved every 2: the save at step 4 forces the check first.
  result = run(workdir, env={'FT_NAN_STEPS': 4}, log_every_steps=3, eval_every_steps=0,
               **{'checkpoint.every_steps': 2, 'checkpoint.keep_best': 0})
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert 'train/loss is nan somewhere in steps 4..4' in result.stderr
  assert steps(workdir) == [2]
  state = dump(workdir / 'checkpoints/2', tmp_path / 'two.npz', 1)
  assert all(np.isfinite(v).all() for v in state.values() if v.dtype.kind == 'f')


def test_i_skip_policy_keeps_state_counts_and_stops_after_m_in_a_row(tmp_path):
  workdir = tmp_path / 'nan_skip'
  result = run(workdir, env={'FT_NAN_STEPS': '2,3,5,6,7'}, total_steps=9, eval_every_steps=0,
               nonfinite_policy='skip', nonfinite_max_skips=3,
               **{'checkpoint.keep': 10, 'checkpoint.keep_best': 0})
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert '3 steps in a row had a non-finite loss' in result.stderr
  assert 'within steps 7..7' in result.stderr
  assert steps(workdir) == [1, 2, 3, 4, 5, 6]  # Stopped before saving step 7.
  rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  assert [r['train/skipped_steps'] for r in rows] == [0, 1, 1, 0, 1, 1]
  assert all(np.isfinite(r['train/loss']) for r in rows if r['train/skipped_steps'] == 0)
  one, three = (dump(workdir / f'checkpoints/{s}', tmp_path / f'{s}.npz', 1) for s in (1, 3))
  assert_same(one, three, prefixes=('params', 'batch_stats', 'opt_state', 'ema_params'))
  assert three['step'] == 3  # The step counter (and data) moved on.


# ---- (j) unwritable or full workdir --------------------------------------------------------


def test_j_unwritable_workdir_fails_at_start(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  result = run(blocker / 'run')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert f'cannot write checkpoints to {blocker}/run/checkpoints' in result.stderr


def _limit_file_size():
  import resource
  # Files over 16 KB fail with EFBIG (SIGXFSZ ignored so the write returns an error instead of
  # killing the process): a disk that fills up once checkpoints start arriving.
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))


def test_j_full_disk_at_save_stops_the_run(tmp_path):
  workdir = tmp_path / 'full'
  cmd = _cmd(workdir, {'checkpoint.every_steps': 2, 'eval_every_steps': 0,
                       'checkpoint.keep_best': 0})
  result = subprocess.run(cmd, cwd=ROOT, env=_env(1), capture_output=True, text=True,
                          timeout=TIMEOUT, preexec_fn=_limit_file_size)
  assert result.returncode == 1, result.stderr[-3000:]
  # orbax's writer thread prints its own traceback; ours is one clear line.
  assert 'error: writing checkpoint step 2' in result.stderr, result.stderr[-3000:]
  last = result.stderr[result.stderr.index('error: writing checkpoint step 2'):].splitlines()[0]
  assert f'{workdir}/checkpoints' in last
  assert 'File too large' in last and 'Fix: free disk space' in last
  assert steps(workdir) == []  # Nothing finalised, nothing reported as saved.
  assert max(losses(workdir)) <= 4  # Stopped at the first log after the failed write.
  assert 'Final:' not in result.stdout
