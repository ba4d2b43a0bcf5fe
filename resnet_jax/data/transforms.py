"""Geometric transforms on PIL images: crops, resizes, flips (the boxes are the random part)."""

import math

import numpy as np
from PIL import Image

from resnet_jax.data import decode
from resnet_jax.data.decode import convert, target_mode

try:  # Optional C extension (built by `pip install -e .`): PIL's bilinear resize, vectorised.
  from resnet_jax.data import _resize
except ImportError:
  _resize = None

CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
EVAL_CROP_FRACTION = 0.875  # Eval: resize the shorter side to size / 0.875, then centre crop.
CIFAR_PAD = 4
_DRAFT_SCALES = (8, 4, 2, 1)  # DCT scalings libjpeg can decode at.

Box = tuple[float, float, float, float]  # (left, top, width, height) in original pixels.


def sample_crop_box(rng: np.random.Generator, width: int, height: int,
                    scale=CROP_SCALE, ratio=CROP_RATIO) -> Box:
  """Inception-style random crop: area fraction ~ U(scale), log aspect ratio ~ U(log ratio)."""
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      left = int(rng.integers(0, width - w + 1))
      top = int(rng.integers(0, height - h + 1))
      return left, top, w, h
  # Rare fallback (extreme aspect ratios): the largest centred crop within the ratio bounds.
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    w, h = int(round(height * ratio[1])), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def center_crop_box(width: int, height: int, fraction: float = EVAL_CROP_FRACTION) -> Box:
  """Centred square covering `fraction` of the shorter side (resize-then-crop in one box)."""
  side = min(width, height) * fraction
  return (width - side) / 2, (height - side) / 2, side, side


def draft_scale(box_w: float, box_h: float, size: int) -> int:
  """Largest JPEG DCT reduction that keeps the crop at least `size` pixels on both sides."""
  for s in _DRAFT_SCALES:
    if box_w / s >= size and box_h / s >= size:
      return s
  return 1


def resized_crop(img: Image.Image, box: Box, size: int, channels: int,
                 use_draft: bool = True, data=None, flip: bool = False) -> np.ndarray:
  """Crops `box` (original coordinates), resizes it to size x size (PIL's BILINEAR), mirrors it
  when `flip`; returns uint8 pixels [size, size, channels]. JPEGs are decoded reduced when the
  box allows (draft).

  The box is chosen before decoding, so the reduction changes only the pixels' source resolution,
  never which region is cropped. With `data` (the encoded bytes `img` was opened from), RGB JPEGs
  are decoded only around the box (decode.decode_jpeg_box): the same pixels, less work, and
  resized by the `_resize` extension when built (PIL's result bit for bit, flip included).
  """
  left, top, w, h = box
  scale = 1.0
  denom = 1
  if use_draft and img.format == 'JPEG':
    s = draft_scale(w, h, size)
    if s > 1:
      width, height = img.size
      drafted = img.draft(target_mode(channels), (width // s, height // s))
      if drafted is not None:
        scale = width / drafted[1][2]  # The reduction libjpeg actually applies.
        denom = next((d for d in _DRAFT_SCALES[::-1] if img.size == (-(-width // d),
                                                                      -(-height // d))), 1)
  src = (left / scale, top / scale, (left + w) / scale, (top + h) / scale)
  if data is not None and channels == 3 and img.format == 'JPEG':
    out = _partial_resized(data, img, img.size, src, size, denom, flip)
    if out is not None:
      return out
  # A whole decoded image: PIL's own resize (converting all of it to an array first costs more
  # than the faster resize saves). Bit-identical to `resize` (tests/data/test_resize.py).
  img = convert(img, channels).resize((size, size), Image.BILINEAR, box=src)
  return np.asarray(flip_image(img) if flip else img).reshape(size, size, channels)


def jpeg_resized_crop(data: bytes, image_size: tuple[int, int], box: Box, size: int,
                      flip: bool = False) -> np.ndarray | None:
  """resized_crop of JPEG bytes whose (width, height) decode.jpeg_size read, without PIL: only
  the box is decoded (no DCT reduction). The same pixels as resized_crop; None if the decoder
  declines (the caller then goes through PIL)."""
  left, top, w, h = box
  return _partial_resized(data, None, image_size, (left, top, left + w, top + h), size, 1, flip)


def _partial_resized(data, img, image_size, src, size: int, denom: int, flip: bool):
  # The pixels PIL's resize of `src` reads, decoded alone, then resized with `src` shifted.
  region = _filter_region(src, size, image_size)
  part = decode.decode_jpeg_box(data, img, region, denom)
  if part is None:
    return None
  x, y = region[:2]
  return resize(part, (src[0] - x, src[1] - y, src[2] - x, src[3] - y), size, flip)


def resize(pixels: np.ndarray, box: tuple[float, float, float, float], size: int,
           flip: bool = False) -> np.ndarray:
  """`box` of uint8 [H, W, C] pixels resized to [size, size, C] as PIL's BILINEAR, mirrored left-
  right when `flip`. Uses the `_resize` extension (bit-equal to PIL, tested) when built."""
  h, w, c = pixels.shape
  if _resize is not None and c in (1, 3):
    out = np.empty((size, size, c), np.uint8)
    _resize.resize_into(np.ascontiguousarray(pixels), h, w, c, out, size, size,
                        tuple(float(v) for v in box), flip)
    return out
  img = Image.fromarray(pixels[..., 0] if c == 1 else pixels)
  img = img.resize((size, size), Image.BILINEAR, box=box)
  return np.asarray(flip_image(img) if flip else img).reshape(size, size, c)


def _filter_region(src, size: int, image_size) -> tuple[int, int, int, int]:
  """Integer (left, top, right, bottom) of the pixels PIL's bilinear resize of `src` to size x size
  reads (support: 1 pixel times the reduction), with one pixel to spare, within the image.

  Resizing this region with `src` shifted by its origin gives the same output as resizing the
  whole image: every weight PIL computes sees the same pixels at the same offsets.
  """
  region = []
  for lo, hi, n in ((src[0], src[2], image_size[0]), (src[1], src[3], image_size[1])):
    support = max((hi - lo) / size, 1.0)
    region.append((max(math.floor(lo - support) - 1, 0), min(math.ceil(hi + support) + 1, n)))
  (x0, x1), (y0, y1) = region
  return x0, y0, x1, y1


def fit(img: Image.Image, size: int) -> Image.Image:
  """Images >= 7/8 of size are zero-padded to it (28 -> 32); others resized (and centre-cropped)."""
  w, h = img.size
  if w == h == size:
    return img
  if w <= size and h <= size and min(w, h) >= size * EVAL_CROP_FRACTION:
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))  # PIL fills outside with zeros.
  side = min(w, h)
  box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
  return img.resize((size, size), Image.BILINEAR, box=box)


def pad_random_crop(img: Image.Image, rng: np.random.Generator,
                    pad: int = CIFAR_PAD) -> Image.Image:
  """CIFAR-style: zero-pad by `pad` on every side, then a random crop of the original size."""
  w, h = img.size
  dx, dy = (int(v) for v in rng.integers(0, 2 * pad + 1, size=2))
  return img.crop((dx - pad, dy - pad, dx - pad + w, dy - pad + h))


def random_erasing(pixels: np.ndarray, rng: np.random.Generator, probability: float,
                   area: tuple[float, float] = (0.02, 0.4),
                   log_ratio: tuple[float, float] = (math.log(0.3), math.log(1 / 0.3)),
                   attempts: int = 10) -> np.ndarray:
  """Random Erasing (Zhong et al. 2020, the paper's defaults): with `probability`, one rectangle
  of 2-40% of the image with aspect ratio 0.3-3.3 is replaced by uniform random pixels.

  `pixels` is uint8 [H, W, C]; returns a new array (or the input, untouched, when not erasing).
  Like the paper's code, gives up after `attempts` rectangles that do not fit.
  """
  if probability <= 0 or rng.random() >= probability:
    return pixels
  h, w = pixels.shape[:2]
  for _ in range(attempts):
    target = h * w * rng.uniform(*area)
    ratio = math.exp(rng.uniform(*log_ratio))
    eh, ew = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
    if 0 < eh < h and 0 < ew < w:
      top, left = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
      out = pixels.copy()
      out[top:top + eh, left:left + ew] = rng.integers(
          0, 256, (eh, ew) + pixels.shape[2:], dtype=np.uint8)
      return out
  return pixels


def draw_flip(rng: np.random.Generator) -> bool:
  """Whether to mirror: probability 1/2 (the one draw random_flip makes)."""
  return rng.random() < 0.5


def flip_image(img: Image.Image) -> Image.Image:
  return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def random_flip(img: Image.Image, rng: np.random.Generator) -> Image.Image:
  """Horizontal flip with probability 1/2."""
  return flip_image(img) if draw_flip(rng) else img
