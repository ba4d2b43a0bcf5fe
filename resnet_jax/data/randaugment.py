"""RandAugment (Cubuk et al. 2019): N ops drawn uniformly, each at magnitude M of 10."""

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

MAX_MAGNITUDE = 10.0
_FILL = 128  # Grey fill for geometric ops, as in the reference implementations.


def parse(spec: str) -> tuple[int, int] | None:
  """'N,M' -> (N, M); '' -> None."""
  if not spec:
    return None
  try:
    n, m = (int(v) for v in spec.split(','))
  except ValueError:
    raise ValueError(f"data.randaugment={spec!r} must be 'N,M' (e.g. '2,9') or ''.") from None
  if n < 0 or not 0 <= m <= MAX_MAGNITUDE:
    raise ValueError(f'data.randaugment={spec!r}: need N >= 0 and 0 <= M <= 10.')
  return n, m


def _fill(img):
  return _FILL if img.mode == 'L' else (_FILL,) * 3


def _affine(img, coeffs):
  return img.transform(img.size, Image.AFFINE, coeffs, Image.BILINEAR, fillcolor=_fill(img))


def _enhance(cls):
  return lambda img, m, sign: cls(img).enhance(1.0 + sign * 0.9 * m)


# Each op takes (image, magnitude in 0..1, random sign) and returns an image.
OPS = {
  'identity': lambda img, m, sign: img,
  'autocontrast': lambda img, m, sign: ImageOps.autocontrast(img),
  'equalize': lambda img, m, sign: ImageOps.equalize(img),
  'rotate': lambda img, m, sign: img.rotate(sign * 30.0 * m, Image.BILINEAR, fillcolor=_fill(img)),
  'solarize': lambda img, m, sign: ImageOps.solarize(img, int(256 - 256 * m)),
  'posterize': lambda img, m, sign: ImageOps.posterize(img, 8 - int(round(4 * m))),
  'color': _enhance(ImageEnhance.Color),
  'contrast': _enhance(ImageEnhance.Contrast),
  'brightness': _enhance(ImageEnhance.Brightness),
  'sharpness': _enhance(ImageEnhance.Sharpness),
  'shear_x': lambda img, m, sign: _affine(img, (1, sign * 0.3 * m, 0, 0, 1, 0)),
  'shear_y': lambda img, m, sign: _affine(img, (1, 0, 0, sign * 0.3 * m, 1, 0)),
  'translate_x': lambda img, m, sign: _affine(img, (1, 0, sign * 0.45 * m * img.width, 0, 1, 0)),
  'translate_y': lambda img, m, sign: _affine(img, (1, 0, 0, 0, 1, sign * 0.45 * m * img.height)),
}
_NAMES = tuple(OPS)


def rand_augment(img: Image.Image, rng: np.random.Generator, n: int, m: int) -> Image.Image:
  """Applies `n` random ops at magnitude `m` (0..10) to an 'L' or 'RGB' image."""
  for op in rng.integers(0, len(_NAMES), size=n):
    sign = 1.0 if rng.random() < 0.5 else -1.0
    img = OPS[_NAMES[op]](img, m / MAX_MAGNITUDE, sign)
  return img
