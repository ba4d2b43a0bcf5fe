"""The trainer's compiled train step for a small model: what memory and communication tests read.

Compiled at LLVM's lowest optimisation level (tests/fast_compile.py): the same optimised HLO and
planned memory in about half the time. The step is compiled, not run.
"""

import jax
import ml_collections
import numpy as np

from resnet_jax import optim, parallel, steps
from resnet_jax.models import create_model
from tests import fast_compile


def compiled_train_step(num_devices: int, model_name: str = 'resnet_tiny', batch: int = 4,
                        size: int = 32, **fields):
  """(compiled step, initial state) for `model_name` on the first `num_devices` devices."""
  mesh = parallel.create_mesh(jax.devices()[:num_devices])
  tx = optim.create_optimizer(ml_collections.ConfigDict(dict(
    momentum=0.9, nesterov=True, weight_decay=1e-4, weight_decay_mode='coupled',
    weight_decay_exclude=('bias', 'scale'))), lambda s: 0.1)
  images = parallel.global_batch(mesh, {'image': np.zeros((batch, size, size, 3), np.float32),
                                        'label': np.zeros(batch, np.int32)})
  model = create_model(model_name, **fields)
  state = steps.create_train_state(model, tx, jax.random.key(0), (size, size, 3), mesh)
  metrics = jax.device_put(steps.zero_train_metrics(), parallel.replicated(mesh))
  step = steps.create_train_step(model, tx, mesh)
  return step.lower(state, metrics, images).compile(fast_compile.OPTIONS), state
