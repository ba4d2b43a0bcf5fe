"""Mesh, shardings and global batches on 8 simulated devices."""

import jax
import numpy as np
import pytest

from resnet_jax import parallel


def test_global_batch_is_sharded_over_all_devices():
  mesh = parallel.create_mesh()
  assert mesh.devices.size == 8 and mesh.axis_names == ('data',)
  local = {'image': np.arange(16 * 2, dtype=np.float32).reshape(16, 2),
           'label': np.arange(16, dtype=np.int32)}
  batch = parallel.global_batch(mesh, local)
  assert batch['image'].shape == (16, 2)
  assert len(batch['label'].addressable_shards) == 8
  assert {s.data.shape for s in batch['label'].addressable_shards} == {(2,)}
  np.testing.assert_array_equal(jax.device_get(batch['image']), local['image'])


def test_replicate_puts_a_copy_on_every_device():
  mesh = parallel.create_mesh()
  x = parallel.replicate(mesh, {'w': np.ones(3, np.float32)})['w']
  assert x.sharding.is_fully_replicated and len(x.addressable_shards) == 8


def test_per_process_batch_size_names_the_fix():
  mesh = parallel.create_mesh()
  assert parallel.per_process_batch_size(64, mesh) == 64  # One process holds the global batch.
  with pytest.raises(ValueError, match=r'batch_size=12 .* multiple of 8'):
    parallel.per_process_batch_size(12, mesh)
