"""The _resize extension: Pillow's BILINEAR resize bit for bit (flip included), clean errors."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from resnet_jax.data import decode, stats, transforms
from resnet_jax.data.processing import Processor

_resize = pytest.importorskip('resnet_jax.data._resize')


def _photo_pixels() -> np.ndarray:
  import sklearn

  path = os.path.join(os.path.dirname(sklearn.__file__), 'datasets', 'images', 'flower.jpg')
  return np.asarray(Image.open(path).convert('RGB'))


def _pil(pixels, box, size, flip):
  img = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
  img = img.resize(size[::-1], Image.BILINEAR, box=box)
  if flip:
    img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return np.asarray(img).reshape(size + (pixels.shape[-1],))


def test_equals_pil_bit_for_bit_on_random_boxes():
  rgb = _photo_pixels()
  gray = np.ascontiguousarray(rgb[..., 1:2])
  noise = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
  rng = np.random.default_rng(0)
  cases = 0
  for pixels in (rgb, gray, noise):
    h, w = pixels.shape[:2]
    for i in range(60):
      x0, y0 = rng.uniform(0, w - 2), rng.uniform(0, h - 2)
      x1, y1 = rng.uniform(x0 + 1, w), rng.uniform(y0 + 1, h)
      if i % 3 == 0:  # integer boxes, as the crops are
        x0, y0, x1, y1 = int(x0), int(y0), max(int(x1), int(x0) + 1), max(int(y1), int(y0) + 1)
      size = (int(rng.integers(1, 300)), int(rng.integers(1, 300)))  # down- and upsampling
      flip = bool(i % 2)
      out = np.empty(size + (pixels.shape[-1],), np.uint8)
      _resize.resize_into(pixels, h, w, pixels.shape[-1], out, *size, (x0, y0, x1, y1), flip)
      np.testing.assert_array_equal(out, _pil(pixels, (x0, y0, x1, y1), size, flip))
      cases += 1
  assert cases == 180


def test_whole_image_and_identity():
  pixels = np.ascontiguousarray(_photo_pixels()[:50, :70])
  for size in (224, 10, 1):
    out = transforms.resize(pixels, (0, 0, 70, 50), size)
    np.testing.assert_array_equal(out, _pil(pixels, (0, 0, 70, 50), (size, size), False))
  out = np.empty((50, 70, 3), np.uint8)
  _resize.resize_into(pixels, 50, 70, 3, out, 50, 70, (0, 0, 70, 50))
  np.testing.assert_array_equal(out, pixels)  # the identity resize copies


@pytest.mark.parametrize('kwargs, message', [
  (dict(channels=4), 'channels must be 1 or 3'),
  (dict(box=(0, 0, 71, 50)), 'not inside'),
  (dict(box=(5, 5, 5, 10)), 'not inside'),
  (dict(out_height=0), 'sizes must be positive'),
  (dict(height=49), 'src must be'),
  (dict(out_width=9), 'out must be'),
])
def test_bad_arguments_are_clear_errors(kwargs, message):
  args = dict(src=np.zeros((50, 70, 3), np.uint8), height=50, width=70, channels=3,
              out=np.empty((8, 8, 3), np.uint8), out_height=8, out_width=8, box=(0, 0, 70, 50))
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    _resize.resize_into(**args)


def test_transform_is_the_same_with_and_without_the_extension(monkeypatch):
  buf = io.BytesIO()
  Image.fromarray(_photo_pixels()).save(buf, format='JPEG', quality=90)
  data = buf.getvalue()
  proc = Processor(64, 3, 1000, *stats.IMAGENET, augment='imagenet', train=True, normalize=False)
  fast = [proc.image(data, np.random.default_rng(s)) for s in range(12)]
  monkeypatch.setattr(transforms, '_resize', None)
  slow = [proc.image(data, np.random.default_rng(s)) for s in range(12)]
  for a, b in zip(fast, slow, strict=True):
    np.testing.assert_array_equal(a, b)
  # Mirrored outputs occur, and are the same crop mirrored (flip drawn right after the box).
  box = transforms.sample_crop_box(np.random.default_rng(3), 640, 427)
  img = decode.open_image(data)
  plain = transforms.resized_crop(img, box, 64, 3, data=data)
  mirrored = transforms.resized_crop(decode.open_image(data), box, 64, 3, data=data, flip=True)
  np.testing.assert_array_equal(mirrored, plain[:, ::-1])
