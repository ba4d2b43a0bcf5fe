"""Geometric transforms on PIL images: crops, resizes, flips (the boxes are the random part)."""

import math

import numpy as np
from PIL import Image

from resnet_jax.data.decode import convert, target_mode

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
                 use_draft: bool = True) -> Image.Image:
  """Crops `box` (original coordinates) and resizes it to size x size, decoding JPEGs reduced.

  The box is chosen before decoding, so the reduction changes only the pixels' source resolution,
  never which region is cropped.
  """
  left, top, w, h = box
  scale = 1.0
  if use_draft and img.format == 'JPEG':
    s = draft_scale(w, h, size)
    if s > 1:
      width = img.width
      drafted = img.draft(target_mode(channels), (width // s, img.height // s))
      if drafted is not None:
        scale = width / drafted[1][2]  # The reduction libjpeg actually applies.
  img = convert(img, channels)
  src = (left / scale, top / scale, (left + w) / scale, (top + h) / scale)
  return img.resize((size, size), Image.BILINEAR, box=src)


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


def random_flip(img: Image.Image, rng: np.random.Generator) -> Image.Image:
  """Horizontal flip with probability 1/2."""
  return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img
