"""Multi-host (jax.distributed) on CPU: several localhost processes, each with simulated devices.

Every test starts real processes (this file is also the worker: `python tests/test_multihost.py
--process_id=…`), connected through a localhost coordinator exactly as
launch/local_multiprocess.sh does, and bounds each with a timeout. What is compared:
- 2 processes x 2 devices vs 1 process x 4 devices, both fed by the real grain pipeline
  (digits, 8x8) with the same global batches: per-step losses and final params;
- the exact eval pass across processes: count, label sum and metrics vs the 1-process run;
- checkpoints written by 2 processes restored by 1, and the reverse;
- a killed process makes the survivor exit non-zero, naming the lost peer, within 60 s.

Same global batches. The train pipeline shuffles one global epoch order and gives process p the
positions p, p + P, p + 2P, … (`ds[process_index::process_count]`), so at every step the P
per-process batches together hold exactly the B examples a single process would get at that
step, but joined in process order the rows are interleaved: [0, 2, 4, …, 1, 3, 5, …] for P = 2.
The 1-process run reorders its batch rows that way (`--emulate_processes`), which makes the two
global batches identical row for row (BatchNorm and the mean loss would only see a summation-
order difference otherwise).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import fast_compile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PYTHON = sys.executable
BATCH = 16  # Global batch: 4 per device on 4 devices.
STEPS = 3
EVAL_EXAMPLES = 296  # digits 'test': with 8 per process per batch, the last batch is padded.


# ---- the worker (one process of a run) -----------------------------------------------------


def _config():
  from resnet_jax import config_validation
  config = config_validation.default_config()
  config.model.name = 'resnet_tiny'
  config.batch_size = BATCH
  config.data.name = 'digits'
  config.data.image_size = 8
  config.data.augment = 'none'
  config.data.prefetch = 1
  config.optim.base_lr = 0.05
  config.optim.lr_batch_base = BATCH
  return config


def _flat(tree) -> dict[str, np.ndarray]:
  import jax
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def worker(args: argparse.Namespace) -> None:
  """One process: init distributed, then train / evaluate / save / restore as asked."""
  from resnet_jax import parallel
  parallel.initialize_distributed(args.num_processes > 1, f'localhost:{args.port}',
                                  args.num_processes, args.process_id,
                                  heartbeat_timeout_s=args.heartbeat_timeout_s,
                                  initialization_timeout_s=60)
  import jax
  import jax.numpy as jnp
  import optax

  from resnet_jax import checkpoint, data, evaluation, steps
  from resnet_jax.models import create_model

  assert jax.process_count() == args.num_processes, jax.process_count()
  config = _config()
  mesh = parallel.create_mesh()
  info = data.dataset_info(config.data)
  model = create_model('resnet_tiny', num_classes=info.num_classes, zero_init_residual=False)
  tx = optax.sgd(0.05, momentum=0.9)
  image_shape = (8, 8, info.image_shape[-1])
  state = steps.create_train_state(model, tx, jax.random.PRNGKey(0), image_shape, mesh)
  pid, count = jax.process_index(), jax.process_count()
  train_iter = data.create_train_iterator(config.data, seed=0, global_batch_size=BATCH,
                                          process_index=pid, process_count=count)
  out: dict = {'process_index': pid, 'process_count': count, 'devices': jax.device_count()}

  if args.restore_dir:
    ckpt = config.checkpoint
    manager = checkpoint.create_manager(args.restore_dir, ckpt)
    restored = checkpoint.restore_latest(manager, checkpoint.abstract_like(state), train_iter,
                                         restore_data_state=False)
    manager.close()
    assert restored is not None, f'no checkpoint in {args.restore_dir}'
    state, out['restored_step'] = restored

  step_fn = steps.create_train_step(model, tx, mesh)
  local_batch = BATCH // count
  order = np.concatenate([np.arange(p, local_batch, args.emulate_processes)
                          for p in range(args.emulate_processes)])
  losses = []
  for step in range(args.steps):
    local = next(train_iter)
    local = {'image': local['image'][order], 'label': local['label'][order]}
    metrics = parallel.replicate(mesh, steps.zero_train_metrics())
    state, metrics = step_fn(state, metrics, parallel.global_batch(mesh, local))
    losses.append(float(metrics['loss']) / float(metrics['count']))
    if args.ready_file:  # The kill test waits for this: every process has run a step.
      with open(f'{args.ready_file}.{pid}', 'w') as f:
        f.write(str(step))
  out['losses'] = losses

  if args.eval:
    eval_iter = data.create_eval_iterator(config.data, global_batch_size=BATCH,
                                          process_index=pid, process_count=count)
    sums_fn = jax.jit(lambda b: {'count': jnp.sum(b['mask']),
                                 'label_sum': jnp.sum(b['label'] * b['mask']),
                                 'pixel_sum': jnp.sum(b['image'].sum((1, 2, 3)) * b['mask'])},
                      out_shardings=parallel.replicated(mesh))
    totals = {'count': 0, 'label_sum': 0, 'pixel_sum': 0.0}
    local_examples = 0
    for local in data.create_eval_iterator(config.data, global_batch_size=BATCH,
                                           process_index=pid, process_count=count):
      local_examples += int(local['mask'].sum())
      sums = sums_fn(parallel.global_batch(mesh, dict(local)))
      totals = {k: totals[k] + float(v) for k, v in sums.items()}
    out['eval_sums'] = totals
    out['eval_local_examples'] = local_examples
    out['eval'] = evaluation.evaluate(
        evaluation.create_eval_step(model, mesh), evaluation.eval_variable_sets(state), eval_iter,
        mesh, expected_count=info.num_examples[config.data.eval_split])

  if args.save_dir:  # Every process takes part in the save (orbax synchronises them).
    manager = checkpoint.create_manager(args.save_dir, config.checkpoint)
    checkpoint.save(manager, int(state.step), state, train_iter, {'test': 'multihost'})
    checkpoint.wait(manager)
    manager.close()

  with parallel.naming_lost_peers():
    while args.spin:  # The kill test: keep running steps (each a cross-process all-reduce).
      batch = parallel.global_batch(mesh, {'image': local['image'], 'label': local['label']})
      state, metrics = step_fn(state, metrics, batch)
      float(metrics['count'])

  if pid == 0:
    np.savez(args.out + '.npz', **_flat(state.params), **_flat(
        {'batch_stats': state.batch_stats}))
    with open(args.out, 'w') as f:
      json.dump(out, f)


# ---- the launcher --------------------------------------------------------------------------


def free_port() -> int:
  import portpicker
  return portpicker.pick_unused_port()


def _env(devices_per_process: int) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith(('JAX_', 'XLA_'))}
  # Both sides of every comparison run here, compiled fast alike (tests/fast_compile.py).
  env.update(XLA_FLAGS=f'--xla_force_host_platform_device_count={devices_per_process} '
                       f'{fast_compile.XLA_FLAG}',
             JAX_PLATFORMS='cpu', TFDS_DISABLE_GCS='1', NO_GCE_CHECK='true',
             PYTHONPATH=ROOT + os.pathsep + env.get('PYTHONPATH', ''), PYTHONUNBUFFERED='1')
  return env


def start(num_processes: int, devices_per_process: int, out: str, *extra: str,
          logdir: str) -> list[subprocess.Popen]:
  """Starts the processes of one run; their output goes to logdir/process_<i>.log."""
  port = free_port()
  procs = []
  for pid in range(num_processes):
    log = open(os.path.join(logdir, f'process_{pid}.log'), 'w')
    cmd = [PYTHON, os.path.abspath(__file__), f'--process_id={pid}',
           f'--num_processes={num_processes}', f'--port={port}', f'--out={out}', *extra]
    procs.append(subprocess.Popen(cmd, env=_env(devices_per_process), cwd=ROOT, stdout=log,
                                  stderr=subprocess.STDOUT))
    log.close()
  return procs


def _tail(logdir: str) -> str:
  text = []
  for name in sorted(os.listdir(logdir)):
    if name.endswith('.log'):
      with open(os.path.join(logdir, name)) as f:
        text.append(f'--- {name}:\n' + ''.join(f.readlines()[-30:]))
  return '\n'.join(text)


def run(tmp_path, name: str, num_processes: int, devices_per_process: int, *extra: str,
        timeout: float = 150) -> tuple[dict, dict]:
  """Runs one multi-process job to completion; returns (process 0's JSON, params arrays)."""
  logdir = tmp_path / name
  logdir.mkdir()
  out = str(logdir / 'result.json')
  procs = start(num_processes, devices_per_process, out, *extra, logdir=str(logdir))
  deadline = time.time() + timeout
  try:
    for p in procs:
      p.wait(timeout=max(deadline - time.time(), 1))
  except subprocess.TimeoutExpired:
    pytest.fail(f'{name}: not finished after {timeout} s\n{_tail(str(logdir))}')
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  codes = [p.returncode for p in procs]
  assert codes == [0] * num_processes, f'{name}: exit codes {codes}\n{_tail(str(logdir))}'
  with open(out) as f:
    result = json.load(f)
  return result, dict(np.load(out + '.npz'))


def assert_same_params(a: dict, b: dict, atol: float = 1e-5) -> float:
  assert a.keys() == b.keys()
  worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
  assert worst <= atol, f'params differ by up to {worst}'
  return worst


# ---- tests ---------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """2x2 and 1x4 train + eval + save, then each restores the other's checkpoint (in parallel
  pairs would fight over 2 CPU cores, so one run at a time)."""
  tmp = tmp_path_factory.mktemp('multihost')
  t0 = time.time()
  two, two_params = run(tmp, 'two_by_two', 2, 2, f'--steps={STEPS}', '--eval',
                        f'--save_dir={tmp / "ckpt_two"}')
  t1 = time.time()
  one, one_params = run(tmp, 'one_by_four', 1, 4, f'--steps={STEPS}', '--eval',
                        '--emulate_processes=2', f'--save_dir={tmp / "ckpt_one"}')
  t2 = time.time()
  return {'tmp': tmp, 'two': two, 'two_params': two_params, 'one': one,
          'one_params': one_params, 'seconds': (t1 - t0, t2 - t1)}


@pytest.mark.slow
def test_two_processes_train_like_one(runs):
  two, one = runs['two'], runs['one']
  assert (two['process_count'], two['devices']) == (2, 4)
  assert (one['process_count'], one['devices']) == (1, 4)
  diffs = np.abs(np.array(two['losses']) - np.array(one['losses']))
  print(f"losses 2x2 {two['losses']} 1x4 {one['losses']} max diff {diffs.max():.2e}; "
        f"wall 2x2 {runs['seconds'][0]:.1f} s, 1x4 {runs['seconds'][1]:.1f} s")
  assert diffs.max() <= 1e-5
  assert two['losses'][-1] != two['losses'][0]  # Training moved.
  worst = assert_same_params(runs['two_params'], runs['one_params'])
  print(f'final params max |diff| {worst:.2e}')


@pytest.mark.slow
def test_eval_counts_every_example_once_across_processes(runs):
  from resnet_jax.data.sources import digits
  labels = np.asarray([digits.DigitsSource('test')[i]['label'] for i in range(EVAL_EXAMPLES)])
  two, one = runs['two'], runs['one']
  # Each process saw only its shard, and the shards add up to the split.
  assert two['eval_local_examples'] == EVAL_EXAMPLES // 2
  for r in (two, one):
    assert r['eval']['eval/count'] == EVAL_EXAMPLES
    assert r['eval_sums']['count'] == EVAL_EXAMPLES
    assert r['eval_sums']['label_sum'] == labels.sum()
  np.testing.assert_allclose(two['eval_sums']['pixel_sum'], one['eval_sums']['pixel_sum'],
                             rtol=1e-6)
  for key in ('eval/loss', 'eval/top1', 'eval/top5'):
    assert abs(two['eval'][key] - one['eval'][key]) <= 1e-5, key


@pytest.mark.slow
@pytest.mark.parametrize('writer,reader', [((2, 2), (1, 4)), ((1, 4), (2, 2))])
def test_checkpoint_restores_across_process_counts(runs, writer, reader):
  source = 'ckpt_two' if writer == (2, 2) else 'ckpt_one'
  expected = runs['two_params'] if writer == (2, 2) else runs['one_params']
  name = f'restore_{source}_in_{reader[0]}x{reader[1]}'
  result, params = run(runs['tmp'], name, *reader, '--steps=0',
                       f'--restore_dir={runs["tmp"] / source}')
  assert result['restored_step'] == STEPS
  assert result['process_count'] == reader[0]
  assert_same_params(params, expected, atol=0.0)


@pytest.mark.slow
@pytest.mark.parametrize('killed', [1, 0])
def test_killed_process_makes_the_other_exit_within_60s(tmp_path, killed):
  heartbeat = 10
  procs = start(2, 2, str(tmp_path / 'result.json'), '--steps=1', '--spin',
                f'--heartbeat_timeout_s={heartbeat}', f'--ready_file={tmp_path / "ready"}',
                logdir=str(tmp_path))
  survivor = procs[1 - killed]
  try:
    deadline = time.time() + 120
    while not all(os.path.exists(tmp_path / f'ready.{i}') for i in range(2)):
      assert time.time() < deadline, f'never got going\n{_tail(str(tmp_path))}'
      assert all(p.poll() is None for p in procs), f'died early\n{_tail(str(tmp_path))}'
      time.sleep(0.2)
    procs[killed].send_signal(signal.SIGKILL)
    killed_at = time.time()
    try:
      code = survivor.wait(timeout=60)
    except subprocess.TimeoutExpired:
      pytest.fail(f'process {1 - killed} still running 60 s after process {killed} was '
                  f'killed\n{_tail(str(tmp_path))}')
    seconds = time.time() - killed_at
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  with open(tmp_path / f'process_{1 - killed}.log') as f:
    log = f.read()
  print(f'killed process {killed}: process {1 - killed} exited with {code} after '
        f'{seconds:.1f} s')
  assert code != 0
  assert seconds < 60
  # How the lost peer is named: process 0 hosts the coordination service, so its death is
  # "the leader task ... died"; another process's is "tasks are unhealthy (stopped sending
  # heartbeats): <id>" from the service.
  named = ('leader task' in log) if killed == 0 else (
      f'stopped sending heartbeats):\n{killed}' in log)
  assert named, log[-3000:]


# ---- worker entry point --------------------------------------------------------------------

if __name__ == '__main__':
  parser = argparse.ArgumentParser()
  parser.add_argument('--process_id', type=int, required=True)
  parser.add_argument('--num_processes', type=int, required=True)
  parser.add_argument('--port', type=int, required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--steps', type=int, default=STEPS)
  parser.add_argument('--emulate_processes', type=int, default=1)
  parser.add_argument('--eval', action='store_true')
  parser.add_argument('--save_dir', default='')
  parser.add_argument('--restore_dir', default='')
  parser.add_argument('--spin', action='store_true')
  parser.add_argument('--ready_file', default='')
  parser.add_argument('--heartbeat_timeout_s', type=int, default=30)
  worker(parser.parse_args())
