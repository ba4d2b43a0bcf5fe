"""Bad input: what can be converted is, the rest is skipped, counted, logged, and stops the run."""

import io
import logging
import os

import numpy as np
import pytest
from PIL import Image

from resnet_jax import data
from resnet_jax.data.processing import Processor

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)


def _encode(img: Image.Image, fmt: str) -> bytes:
  buf = io.BytesIO()
  img.save(buf, fmt)
  return buf.getvalue()


def _jpeg() -> bytes:
  return _encode(Image.fromarray(RGB), 'JPEG')


CONVERTIBLE = {
  'grayscale.png': _encode(Image.fromarray(RGB[..., 0]), 'PNG'),
  'cmyk.jpg': _encode(Image.fromarray(RGB).convert('CMYK'), 'JPEG'),
  'rgba.png': _encode(Image.fromarray(np.dstack([RGB, RGB[..., :1]])), 'PNG'),
  'palette.png': _encode(Image.fromarray(RGB).convert('P'), 'PNG'),
  'sixteen_bit.png': _encode(Image.fromarray(np.full((20, 30), 65535, np.uint16)), 'PNG'),
}
BAD = {
  'truncated.jpg': _jpeg()[:300],
  'corrupt.jpg': RNG.integers(0, 256, 500, dtype=np.uint8).tobytes(),
  'zero_size.jpg': b'',
}


def _proc(channels=3, train=True):
  return Processor(16, channels, 2, (0.5,) * channels, (0.5,) * channels, augment='imagenet',
                   train=train)


@pytest.mark.parametrize('name', sorted(CONVERTIBLE))
@pytest.mark.parametrize('channels', [1, 3])
def test_convertible_images_are_converted(name, channels):
  out = _proc(channels)({'image': CONVERTIBLE[name], 'label': 1, 'id': name},
                        np.random.default_rng(0))
  assert out['valid'] and out['error'] == ''
  assert out['image'].shape == (16, 16, channels) and np.isfinite(out['image']).all()
  if name == 'sixteen_bit.png':  # 16-bit white must stay white (PIL's own convert would clip).
    np.testing.assert_allclose(out['image'], 1.0, atol=1e-5)


def test_sixteen_bit_png_really_is_16_bit():
  assert Image.open(io.BytesIO(CONVERTIBLE['sixteen_bit.png'])).mode.startswith('I')


@pytest.mark.parametrize('name', sorted(BAD))
def test_undecodable_images_are_flagged(name):
  out = _proc()({'image': BAD[name], 'label': 1, 'id': name}, np.random.default_rng(0))
  assert not out['valid'] and not out['mask'] and out['id'] == name and out['error']
  assert out['image'].shape == (16, 16, 3)


@pytest.mark.parametrize('image', [np.zeros((0, 5, 3), np.uint8), np.zeros((4, 4, 5), np.uint8)])
def test_unusable_arrays_are_flagged(image):
  out = _proc()({'image': image, 'label': 0, 'id': 'a'}, np.random.default_rng(0))
  assert not out['valid'] and 'shape' in out['error']


@pytest.mark.parametrize('label', [-1, 2])
def test_label_out_of_range_is_flagged(label):
  out = _proc()({'image': _jpeg(), 'label': label, 'id': 'x'}, np.random.default_rng(0))
  assert not out['valid'] and 'out of range [0, 2)' in out['error']


@pytest.fixture
def bad_folder(tmp_path):
  """train: 8 good + 3 undecodable + 5 convertible; val adds a class unknown to train (label -1)."""
  for split in ('train', 'val'):
    for i in range(4):
      for cls in ('a', 'b'):
        (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
        (tmp_path / split / cls / f'good{i}.jpg').write_bytes(_jpeg())
    for name, raw in {**BAD, **CONVERTIBLE}.items():
      (tmp_path / split / 'a' / name).write_bytes(raw)
  (tmp_path / 'val' / 'zebra').mkdir()
  (tmp_path / 'val' / 'zebra' / 'z.jpg').write_bytes(_jpeg())
  return str(tmp_path)


def _cfg(make_config, root, **kw):
  return make_config(name='image_folder', dir=root, eval_split='val', image_size=16,
                     augment='imagenet', **kw)


def test_eval_masks_bad_examples_and_logs_their_ids(make_config, bad_folder, caplog):
  cfg = _cfg(make_config, bad_folder, max_skip_fraction=0.5)
  with caplog.at_level(logging.WARNING):
    batches = list(data.create_eval_iterator(cfg, global_batch_size=8))
  mask = np.concatenate([b['mask'] for b in batches])
  assert len(mask) == 24 and mask.sum() == 8 + 5  # 17 examples: 4 bad, 7 padding.
  for name in (*BAD, 'z.jpg'):
    assert any(name in r.getMessage() for r in caplog.records), name


def test_train_skips_bad_examples(make_config, bad_folder):
  cfg = _cfg(make_config, bad_folder, max_skip_fraction=0.5)
  it = data.create_train_iterator(cfg, seed=0, global_batch_size=4)
  batches = [next(it) for _ in range(12)]  # Several epochs of 13 good examples.
  assert all(np.isfinite(b['image']).all() and b['image'].shape == (4, 16, 16, 3) for b in batches)
  state = it.get_state()
  assert state['bad'] >= 3 * 2 and state['seen'] == 12 * 4 + state['bad']


@pytest.mark.parametrize('workers', [0, 2])
def test_too_many_bad_examples_stops_with_a_clear_message(make_config, bad_folder, workers):
  cfg = _cfg(make_config, bad_folder, max_skip_fraction=0.1, num_workers=workers)
  it = data.create_train_iterator(cfg, seed=0, global_batch_size=4)
  try:
    with pytest.raises(data.TooManyBadExamplesError) as err:
      for _ in range(10):
        next(it)
  finally:
    it.close()
  message = str(err.value)
  # 16 examples, 10 % -> budget 1.6: the second bad example stops the run, whatever the workers.
  assert message.startswith('2 of ') and 'data.max_skip_fraction=0.1' in message
  assert 'of the 16 examples' in message and '.jpg' in message


def test_all_bad_split_stops_instead_of_hanging(make_config, tmp_path):
  for i in range(3):
    path = tmp_path / 'train' / 'a' / f'{i}.jpg'
    os.makedirs(path.parent, exist_ok=True)
    path.write_bytes(b'not a jpeg')
  cfg = make_config(name='image_folder', dir=str(tmp_path), image_size=8, max_skip_fraction=1.0)
  it = data.create_train_iterator(cfg, seed=0, global_batch_size=1)
  with pytest.raises(data.TooManyBadExamplesError, match='3 of 3'):
    next(it)
