"""`python -m resnet_jax.main` with faults injected from environment variables (tests only).

FT_NAN_STEPS=3,4      the batches of these (1-based) steps become NaN images.
FT_SIGTERM_AT_STEP=K  the process sends itself SIGTERM while step K's batch is being fetched:
                      a preemption at an exactly known step.
FT_SLOW_FINALIZE=N    the async write of checkpoint N prints 'FT finalizing N' and sleeps 120 s
                      just before orbax's atomic rename: a window to kill -9 mid-write.

`--dump STEP_DIR OUT.npz` instead restores STEP_DIR's whole TrainState on this process's
devices (replicated) and writes every leaf to OUT.npz.
"""

import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))


class InjectingIterator:
  """Wraps the train iterator; its checkpoint state includes how many batches it yielded."""

  def __init__(self, inner, nan_steps: set[int], sigterm_at: int):
    self.inner, self.nan_steps, self.sigterm_at, self.count = inner, nan_steps, sigterm_at, 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self.inner)
    self.count += 1
    if self.count == self.sigterm_at:
      os.kill(os.getpid(), signal.SIGTERM)
    if self.count in self.nan_steps:
      import numpy as np
      batch = {**batch, 'image': np.full(batch['image'].shape, np.nan, np.float32)}
    return batch

  # grain's checkpoint handler calls these on non-grain iterators, with bytes.
  def get_state(self) -> bytes:
    return json.dumps({'inner': self.inner.get_state(), 'count': self.count}).encode()

  def set_state(self, state: bytes) -> None:
    state = json.loads(state)
    self.inner.set_state(state['inner'])
    self.count = state['count']

  def start_prefetch(self) -> None:
    pass


def _install() -> None:
  from resnet_jax import data
  nan_steps = {int(s) for s in os.environ.get('FT_NAN_STEPS', '').split(',') if s}
  sigterm_at = int(os.environ.get('FT_SIGTERM_AT_STEP', '0'))
  # Always wrapped, injecting or not: the checkpointed iterator state has the wrapper's format.
  create = data.create_train_iterator
  data.create_train_iterator = lambda *a, **k: InjectingIterator(create(*a, **k), nan_steps,
                                                                 sigterm_at)
  slow = os.environ.get('FT_SLOW_FINALIZE')
  if slow:
    from orbax.checkpoint._src.path import atomicity
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def slow_finalize(self):
      if self.get_final().name == slow:
        print(f'FT finalizing {slow}', flush=True)
        time.sleep(120)
      return await finalize(self)

    atomicity.AtomicRenameTemporaryPath.finalize = slow_finalize


def _dump(step_dir: str, out: str) -> None:
  import jax
  import numpy as np

  from resnet_jax import checkpoint, parallel
  mesh = parallel.create_mesh()
  state = checkpoint.restore_arrays(step_dir, parallel.replicated(mesh))
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  np.savez(out, **{checkpoint.path_name(p): np.asarray(v) for p, v in leaves})
  print(f'restored on {jax.device_count()} devices')


if __name__ == '__main__':
  if sys.argv[1:2] == ['--dump']:
    _dump(sys.argv[2], sys.argv[3])
  else:
    _install()
    from absl import app

    from resnet_jax import main
    app.run(main.main)
