"""Per-example transforms: shape, dtype, range, determinism, crop statistics, draft equivalence."""

import dataclasses
import io
import os

import numpy as np
import pytest
from PIL import Image

from resnet_jax.data import stats, transforms
from resnet_jax.data.mixing import MixBatch
from resnet_jax.data.processing import Processor
from resnet_jax.data.randaugment import OPS, parse, rand_augment


def _photo() -> bytes:
  import sklearn

  folder = os.path.join(os.path.dirname(sklearn.__file__), 'datasets', 'images')
  with open(os.path.join(folder, 'china.jpg'), 'rb') as f:
    return f.read()


def _imagenet(train=True, size=64, **kw):
  return Processor(size, 3, 1000, *stats.IMAGENET, augment='imagenet', train=train, **kw)


def test_crop_box_statistics():
  rng = np.random.default_rng(0)
  boxes = np.array([transforms.sample_crop_box(rng, 640, 427) for _ in range(4000)], np.float64)
  left, top, w, h = boxes.T
  assert np.all(left >= 0) and np.all(top >= 0)
  assert np.all(left + w <= 640) and np.all(top + h <= 427)
  area = w * h / (640 * 427)
  ratio = w / h
  assert area.min() >= 0.08 * 0.97 and area.max() <= 1.0
  assert ratio.min() >= 0.75 * 0.97 and ratio.max() <= 4 / 3 * 1.03
  # Independent vectorised reference of the same law: first of 10 tries that fits the image.
  ref = np.random.default_rng(1)
  a = ref.uniform(0.08, 1, (20000, 10)) * 640 * 427
  r = np.exp(ref.uniform(np.log(3 / 4), np.log(4 / 3), (20000, 10)))
  fits = (np.round(np.sqrt(a * r)) <= 640) & (np.round(np.sqrt(a / r)) <= 427)
  first = a[np.arange(20000), fits.argmax(1)][fits.any(1)] / (640 * 427)
  assert abs(area.mean() - first.mean()) < 0.015
  assert abs(np.median(area) - np.median(first)) < 0.02
  first_ratio = r[np.arange(20000), fits.argmax(1)][fits.any(1)]
  assert abs(np.log(ratio).mean() - np.log(first_ratio).mean()) < 0.015


def test_draft_changes_neither_boxes_nor_much_the_pixels():
  photo = _photo()
  fast, slow = _imagenet(size=48), _imagenet(size=48, use_draft=False)
  diffs = []
  for seed in range(40):
    a = fast.image(photo, np.random.default_rng(seed))
    b = slow.image(photo, np.random.default_rng(seed))
    diffs.append(np.abs(a - b).mean())
  # Identical RNG consumption -> identical boxes; only the decode resolution differs.
  assert max(diffs) < 0.15 and np.mean(diffs) < 0.06
  # Draft really applies for crops >= 2x the output: decoded size is halved or more.
  img = Image.open(io.BytesIO(photo))
  img.draft('RGB', (320, 213))
  assert img.size == (320, 214)


def test_draft_scale():
  assert transforms.draft_scale(640, 427, 224) == 1
  assert transforms.draft_scale(500, 460, 224) == 2
  assert transforms.draft_scale(2000, 1800, 224) == 8
  assert transforms.draft_scale(900, 1000, 224) == 4


@pytest.mark.parametrize('train', [True, False])
def test_imagenet_processor_shape_dtype_range_determinism(train):
  proc = _imagenet(train=train)
  out = proc({'image': _photo(), 'label': 3, 'id': 'x'}, np.random.default_rng(1))
  again = proc({'image': _photo(), 'label': 3, 'id': 'x'}, np.random.default_rng(1))
  assert out['image'].shape == (64, 64, 3) and out['image'].dtype == np.float32
  assert out['valid'] and out['label'] == 3 and out['label'].dtype == np.int32
  lo = (0 - np.array(stats.IMAGENET[0])) / np.array(stats.IMAGENET[1])
  hi = (1 - np.array(stats.IMAGENET[0])) / np.array(stats.IMAGENET[1])
  assert np.all(out['image'] >= lo - 1e-5) and np.all(out['image'] <= hi + 1e-5)
  np.testing.assert_array_equal(out['image'], again['image'])
  if train:
    other = proc({'image': _photo(), 'label': 3, 'id': 'x'}, np.random.default_rng(2))
    assert not np.array_equal(out['image'], other['image'])


def test_eval_resize_then_centre_crop():
  box = transforms.center_crop_box(640, 427)
  assert box == pytest.approx(((640 - 373.625) / 2, (427 - 373.625) / 2, 373.625, 373.625))


def test_fit_pads_28_to_32_and_resizes_8():
  img = Image.fromarray(np.full((28, 28), 200, np.uint8))
  out = np.asarray(transforms.fit(img, 32))
  assert out.shape == (32, 32) and out[2:30, 2:30].min() == 200 and out[:2].max() == 0
  small = np.asarray(transforms.fit(Image.fromarray(np.full((8, 8), 9, np.uint8)), 32))
  assert small.shape == (32, 32) and small.min() == 9


def test_cifar_processor_pads_crops_flips_deterministically():
  proc = Processor(32, 1, 10, (0.0,), (1.0,), augment='cifar', train=True)
  image = np.full((28, 28, 1), 255, np.uint8)
  outs = [proc({'image': image, 'label': 0}, np.random.default_rng(s))['image'] for s in range(20)]
  assert all(o.shape == (32, 32, 1) and 0.0 <= o.min() and o.max() <= 1.0 for o in outs)
  assert len({o.tobytes() for o in outs}) > 3  # Random offsets.
  # The 28-px square sits 2 px inside the 32 frame; shifts of up to 4 cut at most 2 px per axis.
  assert all(26 * 26 <= o.sum() <= 28 * 28 for o in outs)
  again = proc({'image': image, 'label': 0}, np.random.default_rng(5))['image']
  np.testing.assert_array_equal(again, outs[5])


def test_digits_scaled_to_unit_range():
  proc = Processor(16, 1, 10, (0.0,), (1.0,))
  out = proc({'image': np.array([[0, 255], [128, 255]], np.uint8)[..., None], 'label': 1})
  assert out['image'].min() == 0.0 and out['image'].max() == 1.0


def test_randaugment_every_op_and_parse():
  assert parse('2,9') == (2, 9) and parse('') is None
  with pytest.raises(ValueError, match='data.randaugment'):
    parse('nine')
  for mode in ('RGB', 'L'):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), np.uint8)).convert(
      mode)
    for op in OPS.values():
      assert op(img, 0.9, -1.0).size == (24, 20)
    out = rand_augment(img, np.random.default_rng(0), 3, 9)
    assert out.size == (24, 20) and out.mode == mode
  proc = Processor(16, 3, 10, (0.5,) * 3, (0.5,) * 3, augment='cifar', train=True,
                   randaugment=(2, 9))
  out = proc({'image': np.zeros((16, 16, 3), np.uint8), 'label': 0}, np.random.default_rng(0))
  assert out['image'].shape == (16, 16, 3)


@pytest.mark.parametrize('mixup,cutmix', [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_mixup_cutmix_soft_targets(mixup, cutmix):
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(6, 8, 8, 3)).astype(np.float32),
           'label': np.arange(6, dtype=np.int32), 'index': np.arange(6, 12)}
  mix = MixBatch(num_classes=10, mixup_alpha=mixup, cutmix_alpha=cutmix, seed=1)
  out, again = mix(batch), mix(batch)
  assert 'index' not in out and out['label_probs'].shape == (6, 10)
  assert out['label_probs'].dtype == np.float32 and out['image'].dtype == np.float32
  np.testing.assert_allclose(out['label_probs'].sum(1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(out['image'], again['image'])
  lam = out['label_probs'][0, 0]
  assert out['label_probs'][0, 5] == pytest.approx(1 - lam, abs=1e-6)


def test_mix_off_only_drops_index():
  batch = {'image': np.zeros((2, 4, 4, 1), np.float32), 'label': np.zeros(2, np.int32),
           'index': np.arange(2)}
  assert set(MixBatch(num_classes=3)(batch)) == {'image', 'label'}


@pytest.mark.parametrize('train', [True, False])
def test_uint8_output_normalised_equals_host_normalised(train):
  """normalize=False yields the same pixels; normalize_pixels (numpy and jax) then matches."""
  import jax.numpy as jnp

  from resnet_jax.data.processing import normalize_pixels

  host, raw = _imagenet(train=train), _imagenet(train=train, normalize=False)
  for seed in range(4):
    a = host({'image': _photo(), 'label': 1}, np.random.default_rng(seed))['image']
    out = raw({'image': _photo(), 'label': 1}, np.random.default_rng(seed))
    b = out['image']
    assert b.dtype == np.uint8 and b.shape == (64, 64, 3) and out['valid']
    np.testing.assert_allclose(normalize_pixels(b, *stats.IMAGENET), a, atol=1e-5)
    dev = normalize_pixels(jnp.asarray(b[None]), *stats.IMAGENET)
    assert dev.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(dev[0]), a, atol=1e-5)
  bad = raw({'image': b'not a jpeg', 'label': 1, 'id': 'x'}, np.random.default_rng(0))
  assert not bad['valid'] and bad['image'].dtype == np.uint8


def test_random_erasing_replaces_one_rectangle_within_the_papers_bounds():
  pixels = np.full((28, 28, 1), 7, np.uint8)
  assert transforms.random_erasing(pixels, np.random.default_rng(0), 0.0) is pixels
  areas = []
  for seed in range(200):
    out = transforms.random_erasing(pixels, np.random.default_rng(seed), 1.0)
    assert out.shape == pixels.shape and out.dtype == np.uint8
    assert np.array_equal(pixels, np.full_like(pixels, 7))  # the input is never modified
    rows, cols = np.nonzero(out[..., 0] != 7)
    if rows.size:  # random fill can equal 7 by chance; the changed pixels lie in one rectangle
      area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
      assert area <= 0.4 * 28 * 28 + 28 and rows.size <= area
      areas.append(area)
    again = transforms.random_erasing(pixels, np.random.default_rng(seed), 1.0)
    assert np.array_equal(out, again)  # deterministic given the rng
  assert len(areas) >= 190 and min(areas) < 0.1 * 784 and max(areas) > 0.25 * 784


def test_processor_crop_padding_and_erasing_options():
  img = Image.fromarray(np.full((28, 28), 200, np.uint8))
  buf = io.BytesIO()
  img.save(buf, format='PNG')
  proc = Processor(28, 1, 10, (0.5,), (0.5,), augment='cifar', train=True, normalize=False,
                   crop_padding=2)
  for seed in range(50):  # pad 2: at most 2 zero rows/columns on any side
    out = proc.image(buf.getvalue(), np.random.default_rng(seed))[..., 0]
    assert out.shape == (28, 28) and (out[2:-2, 2:-2] == 200).all()
  erasing = dataclasses.replace(proc, crop_padding=0, random_erasing=1.0)
  changed = [(erasing.image(buf.getvalue(), np.random.default_rng(s)) != 200).any()
             for s in range(20)]
  assert all(changed)
