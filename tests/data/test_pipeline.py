"""grain pipelines: batches, determinism, per-epoch reshuffle, resume, process shards, workers."""

import json

import numpy as np
import pytest

from resnet_jax import data


def _labels_ids(cfg, seed, batch, steps, **kw):
  it = data.create_train_iterator(cfg, seed=seed, global_batch_size=batch, **kw)
  return [next(it) for _ in range(steps)]


def test_train_batches_and_determinism(make_config):
  cfg = make_config(image_size=16)
  a, b = _labels_ids(cfg, 0, 32, 2), _labels_ids(cfg, 0, 32, 2)
  assert a[0]['image'].shape == (32, 16, 16, 1) and a[0]['image'].dtype == np.float32
  assert a[0]['label'].shape == (32,) and a[0]['label'].dtype == np.int32
  assert set(a[0]) == {'image', 'label'}
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x['image'], y['image'])
  c = _labels_ids(cfg, 1, 32, 1)
  assert not np.array_equal(a[0]['label'], c[0]['label'])


def test_each_epoch_is_a_new_permutation(make_config):
  cfg = make_config(name='fake', fake_num_examples=16, fake_num_classes=16, augment='none',
                    image_size=4)
  batches = _labels_ids(cfg, 0, 8, 4)
  # fake labels are per-example constants: use the pixels as example identity.
  ids = [tuple(img.ravel()[:6]) for b in batches for img in b['image']]
  epoch0, epoch1 = ids[:16], ids[16:]
  assert sorted(epoch0) == sorted(epoch1) and len(set(epoch0)) == 16 and epoch0 != epoch1


@pytest.mark.parametrize('mix', [False, True])
def test_resume_gives_exactly_the_next_batch(make_config, mix):
  cfg = make_config(image_size=16, mixup_alpha=0.2 if mix else 0.0, cutmix_alpha=1.0 if mix else 0)
  it = data.create_train_iterator(cfg, seed=3, global_batch_size=64)
  for _ in range(25):  # Past the first epoch boundary (1,501 // 64 = 23 batches).
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # Must survive a JSON checkpoint.
  expected = next(it)
  resumed = data.create_train_iterator(cfg, seed=3, global_batch_size=64)
  resumed.set_state(state)
  got = next(resumed)
  assert set(got) == set(expected) == ({'image', 'label', 'label_probs'} if mix else
                                       {'image', 'label'})
  for key in got:
    np.testing.assert_array_equal(got[key], expected[key])


def test_two_processes_train_shards_are_disjoint(make_config):
  cfg = make_config(name='fake', fake_num_examples=20, fake_num_classes=5, augment='none',
                    image_size=4)
  seen = []
  for p in range(2):
    batches = _labels_ids(cfg, 0, 10, 2, process_index=p, process_count=2)  # 2 x 5 = one epoch.
    assert batches[0]['image'].shape == (5, 4, 4, 3)
    seen.append({tuple(img.ravel()[:6]) for b in batches for img in b['image']})
  assert len(seen[0]) == len(seen[1]) == 10 and not seen[0] & seen[1]


@pytest.mark.parametrize('n,batch,processes', [(296, 64, 2), (13, 6, 3), (5, 8, 4)])
def test_eval_exact_pass_over_processes(make_config, n, batch, processes):
  cfg = make_config(name='fake', fake_num_examples=n, fake_num_classes=3, augment='none',
                    image_size=4)
  counts, images = [], []
  for p in range(processes):
    batches = list(data.create_eval_iterator(cfg, global_batch_size=batch, process_index=p,
                                             process_count=processes))
    counts.append(len(batches))
    for b in batches:
      assert b['image'].shape == (batch // processes, 4, 4, 3) and b['mask'].dtype == bool
      images += [tuple(img.ravel()[:8]) for img in b['image'][b['mask']]]
  assert len(set(counts)) == 1  # Same number of batches on every process.
  assert len(images) == len(set(images)) == n  # Every example exactly once.


def test_eval_default_split_and_no_augmentation(make_config):
  cfg = make_config(image_size=16, augment='cifar', randaugment='2,9')
  a = list(data.create_eval_iterator(cfg, global_batch_size=100))
  b = list(data.create_eval_iterator(cfg, global_batch_size=100))
  assert len(a) == 3 and sum(int(x['mask'].sum()) for x in a) == 296
  np.testing.assert_array_equal(a[0]['image'], b[0]['image'])
  assert set(a[0]) == {'image', 'label', 'mask'}


def test_batch_size_errors_name_the_fix(make_config):
  with pytest.raises(ValueError, match='multiple of the process count'):
    data.create_train_iterator(make_config(), seed=0, global_batch_size=6, process_count=4)
  with pytest.raises(ValueError, match='lower batch_size'):
    data.create_train_iterator(make_config(), seed=0, global_batch_size=4096)


def test_two_workers_match_main_process(make_config):
  cfg = make_config(image_size=16)
  ref = _labels_ids(cfg, 0, 32, 3)
  it = data.create_train_iterator(make_config(image_size=16, num_workers=2), seed=0,
                                  global_batch_size=32)
  try:
    got = [next(it) for _ in range(3)]
    state = it.get_state()
    json.dumps(state)
  finally:
    it.close()
  for x, y in zip(ref, got, strict=True):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])


def test_host_normalize_false_yields_uint8_batches(make_config):
  from resnet_jax.data.pipeline import mean_std
  from resnet_jax.data.processing import normalize_pixels

  cfg = make_config(image_size=16)
  assert cfg.host_normalize  # The default keeps float32 normalised batches.
  host = _labels_ids(cfg, 0, 32, 2)
  raw = _labels_ids(make_config(image_size=16, host_normalize=False, cutmix_alpha=0.0), 0, 32, 2)
  for x, y in zip(host, raw, strict=True):
    assert y['image'].dtype == np.uint8
    np.testing.assert_allclose(normalize_pixels(y['image'], *mean_std(cfg)), x['image'], atol=1e-5)
  with pytest.raises(ValueError, match='host_normalize'):
    data.create_train_iterator(make_config(host_normalize=False, mixup_alpha=0.2), seed=0,
                               global_batch_size=32)
  ev = data.create_eval_iterator(make_config(image_size=16, host_normalize=False),
                                 global_batch_size=32)
  assert next(ev)['image'].dtype == np.uint8
