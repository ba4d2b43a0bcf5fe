"""Partial JPEG decoding (the _jpegcrop extension): same pixels as PIL, clean errors, fallback."""

import io
import logging
import os

import numpy as np
import pytest
from PIL import Image

from resnet_jax.data import decode, stats, transforms
from resnet_jax.data.processing import Processor


def _photo(name='china.jpg') -> bytes:
  import sklearn

  folder = os.path.join(os.path.dirname(sklearn.__file__), 'datasets', 'images')
  with open(os.path.join(folder, name), 'rb') as f:
    return f.read()


def _encode(arr, mode=None, **kw) -> bytes:
  buf = io.BytesIO()
  img = Image.fromarray(arr)
  (img.convert(mode) if mode else img).save(buf, 'JPEG', **kw)
  return buf.getvalue()


def _variants() -> dict[str, bytes]:
  """The 4:4:4 sample photos, and re-encodings with chroma subsampling, progressive, odd sizes."""
  arr = np.asarray(Image.open(io.BytesIO(_photo())))
  return {
    'china': _photo(), 'flower': _photo('flower.jpg'),
    '420': _encode(arr, quality=80, subsampling=2),
    '422': _encode(arr, quality=75, subsampling=1),
    'progressive': _encode(arr, quality=85, progressive=True),
    'odd_size_420': _encode(arr[:397, :613], quality=80, subsampling=2),
    'gray': _encode(arr, 'L'),
  }


def _pil_decode(data: bytes, scale: int = 1) -> np.ndarray:
  img = Image.open(io.BytesIO(data))
  if scale > 1:
    img.draft('RGB', (img.width // scale, img.height // scale))
  return np.asarray(img.convert('RGB'))


@pytest.fixture(scope='module')
def jpegcrop():
  if decode._jpegcrop is None:
    pytest.skip('resnet_jax.data._jpegcrop not built (apt-get install libjpeg62-turbo-dev)')
  return decode._jpegcrop


@pytest.mark.parametrize('scale', [1, 2, 4, 8])
@pytest.mark.parametrize('name', list(_variants()))
def test_crop_equals_pil_full_decode_cropped(jpegcrop, name, scale):
  # Exact: fancy upsampling replicates chroma at the decoded region's edges, so the extension
  # decodes 2 columns beyond the box and drops them (without that margin: edge columns off by ~20).
  data = _variants()[name]
  full = _pil_decode(data, scale)
  height, width = full.shape[:2]
  rng = np.random.default_rng(scale)
  boxes = [(0, 0, height, width), (height - 1, width - 1, 1, 1), (0, width - 3, height, 3)]
  for _ in range(25):
    h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
    boxes.append((int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w))
  for top, left, h, w in boxes:
    out = np.empty((h, w, 3), np.uint8)
    assert jpegcrop.decode_crop_into(data, out, top, left, h, w, scale)
    np.testing.assert_array_equal(out, full[top:top + h, left:left + w], err_msg=f'{top, left}')


def test_corrupt_truncated_and_bad_boxes_raise(jpegcrop):
  data = _variants()['420']
  out = np.empty((10, 10, 3), np.uint8)
  rng = np.random.default_rng(0)
  garbled = bytearray(data)
  garbled[800:1400] = rng.integers(0, 256, 600, dtype=np.uint8).tobytes()
  for bad in (b'\xff\xd8\xff', b'not a jpeg at all', data[:300], data[:len(data) // 2],
              bytes(garbled), rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()):
    with pytest.raises(jpegcrop.JpegError):
      jpegcrop.decode_crop_into(bad, out, 400, 600, 10, 10)
  with pytest.raises(jpegcrop.JpegError, match='outside'):
    jpegcrop.decode_crop_into(data, out, 420, 0, 10, 10)
  with pytest.raises(jpegcrop.JpegError, match='empty'):
    jpegcrop.decode_crop_into(b'', out, 0, 0, 10, 10)
  with pytest.raises(ValueError):
    jpegcrop.decode_crop_into(data, np.empty((10, 9, 3), np.uint8), 0, 0, 10, 10)
  with pytest.raises(ValueError):
    jpegcrop.decode_crop_into(data, out, 0, 0, 10, 10, 3)
  with pytest.raises(TypeError):
    jpegcrop.decode_crop_into(data, bytes(300), 0, 0, 10, 10)  # Read-only output.


def test_cmyk_is_left_to_pil(jpegcrop):
  arr = np.asarray(Image.open(io.BytesIO(_photo())))
  cmyk = _encode(arr, 'CMYK')
  out = np.empty((10, 10, 3), np.uint8)
  assert jpegcrop.decode_crop_into(cmyk, out, 0, 0, 10, 10) is False
  img = decode.open_image(cmyk)
  assert decode.decode_jpeg_box(cmyk, img, (0, 0, 10, 10)) is None


def _transform_pairs(train: bool, names, count: int, **kw):
  args = dict(image_size=224, channels=3, num_classes=1000, mean=stats.IMAGENET[0],
              std=stats.IMAGENET[1], augment='imagenet', train=train, normalize=False, **kw)
  fast, slow = Processor(**args), Processor(**args, partial_decode=False)
  variants = _variants()
  for name in names:
    for i in range(count):
      yield (fast.image(variants[name], np.random.default_rng(i)),
             slow.image(variants[name], np.random.default_rng(i)))


def test_transform_with_and_without_partial_decode(jpegcrop):
  # The decoded pixels are identical; PIL's resize of the region with the box shifted by the
  # region's origin rounds its float coordinates differently in rare cases (mostly crops narrower
  # than the output), so a few output values differ by 1.
  differing = total = 0
  for fast, slow in _transform_pairs(True, ['china', 'flower', '420', 'progressive', 'gray'], 12):
    assert fast.shape == slow.shape and fast.dtype == slow.dtype == np.uint8
    assert np.abs(fast.astype(np.int16) - slow).max() <= 1
    differing += int((fast != slow).sum())
    total += fast.size
  assert differing / total < 0.03
  for fast, slow in _transform_pairs(False, ['china', '420', 'gray'], 1):  # Eval centre crop.
    assert np.abs(fast.astype(np.int16) - slow).max() <= 1


def test_transform_with_draft_scaling(jpegcrop):
  big = np.asarray(Image.open(io.BytesIO(_photo())).resize((1500, 1100)))
  data = _encode(big, quality=80, subsampling=2)
  for box in ((100, 50, 1200, 1000), (0, 0, 1500, 1100), (700, 20, 500, 480)):
    assert transforms.draft_scale(*box[2:], 224) > 1
    fast = np.asarray(transforms.resized_crop(decode.open_image(data), box, 224, 3, data=data))
    slow = np.asarray(transforms.resized_crop(decode.open_image(data), box, 224, 3))
    assert np.abs(fast.astype(np.int16) - slow).max() <= 1


def test_partial_decode_is_deterministic(jpegcrop):
  proc = Processor(64, 3, 1000, *stats.IMAGENET, augment='imagenet', train=True)
  data = _photo()
  a = proc.image(data, np.random.default_rng(7))
  b = proc.image(data, np.random.default_rng(7))
  np.testing.assert_array_equal(a, b)


def test_truncated_jpeg_is_still_a_bad_example():
  proc = Processor(64, 3, 1000, *stats.IMAGENET, augment='imagenet', train=True)
  data = _variants()['420']
  for cut in (300, len(data) // 3, len(data) - 200):
    out = proc({'image': data[:cut], 'label': 1, 'id': 'x'}, np.random.default_rng(0))
    assert not out['valid'] and out['error']


def test_fallback_without_extension_warns_once(monkeypatch, caplog):
  monkeypatch.setattr(decode, '_jpegcrop', None)
  monkeypatch.setattr(decode, '_warned_no_jpegcrop', False)
  monkeypatch.setattr(decode, '_JPEGCROP_IMPORT_ERROR', 'test', raising=False)
  pairs = []
  with caplog.at_level(logging.WARNING, logger=decode.__name__):
    pairs = list(_transform_pairs(True, ['china'], 3))
  assert sum('_jpegcrop is not built' in r.message for r in caplog.records) == 1
  for fast, slow in pairs:
    np.testing.assert_array_equal(fast, slow)


def test_header_only_path_equals_the_pil_opened_path(jpegcrop, monkeypatch):
  data = _photo()
  assert decode.jpeg_size(data) == (640, 427)
  assert decode.jpeg_size(data[:5000]) is None  # truncated: no end-of-image marker
  assert decode.jpeg_size(b'\x89PNG\r\n\x1a\n' + data[2:]) is None
  cmyk = io.BytesIO()
  Image.open(io.BytesIO(data)).convert('CMYK').save(cmyk, format='JPEG')
  assert decode.jpeg_size(cmyk.getvalue()) is None
  procs = [Processor(64, 3, 1000, *stats.IMAGENET, augment='imagenet', train=t) for t in (1, 0)]
  fast = [p.image(data, np.random.default_rng(s)) for p in procs for s in range(8)]
  monkeypatch.setattr(decode, 'jpeg_size', lambda data: None)  # open with PIL first, as before
  slow = [p.image(data, np.random.default_rng(s)) for p in procs for s in range(8)]
  for a, b in zip(fast, slow, strict=True):
    np.testing.assert_array_equal(a, b)
