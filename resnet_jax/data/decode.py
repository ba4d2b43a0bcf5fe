"""Raw record image (encoded bytes or array, any mode or depth) -> PIL image in the dataset's mode.

Anything that can be converted is converted; what cannot raises BadExample with the reason.
"""

import io
import logging
import warnings

import numpy as np
from PIL import Image

# Errors PIL raises for corrupt, truncated or unsupported files.
_PIL_ERRORS = (OSError, ValueError, SyntaxError, TypeError, IndexError, EOFError,
               Image.DecompressionBombError, Image.UnidentifiedImageError)


try:  # Optional C extension (needs libjpeg headers at install time): partial JPEG decoding.
  from resnet_jax.data import _jpegcrop
except ImportError as e:
  _jpegcrop = None
  _JPEGCROP_IMPORT_ERROR = str(e)
_warned_no_jpegcrop = False
# The partial decode stops at the box's bottom, so it checks for the end-of-image marker within
# this many bytes of the end instead (files with more trailing data after it go to PIL).
_EOI_WINDOW = 4096


class BadExample(Exception):
  """An example that cannot be used; the message says why."""


def target_mode(channels: int) -> str:
  """PIL mode of the images a dataset with `channels` channels yields."""
  return 'L' if channels == 1 else 'RGB'


def open_image(data) -> Image.Image:
  """Opens encoded bytes lazily (header only, so JPEG draft still applies) or wraps an array."""
  if data is None:
    raise BadExample('no image data')
  if isinstance(data, (bytes, bytearray, memoryview)):
    if len(data) == 0:
      raise BadExample('empty file')
    try:
      with warnings.catch_warnings():
        warnings.simplefilter('error', Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data))
    except (*_PIL_ERRORS, Image.DecompressionBombWarning) as e:
      raise BadExample(f'undecodable image ({type(e).__name__}: {e})') from None
  else:
    img = _array_to_image(np.asarray(data))
  if img.width == 0 or img.height == 0:
    raise BadExample(f'zero-size image {img.width}x{img.height}')
  return img


def _to_uint8(arr: np.ndarray) -> np.ndarray:
  """Any-depth array -> uint8 0..255 (16-bit scaled by 1/257, floats in 0..1 by 255)."""
  if arr.dtype == np.uint8:
    return arr
  if arr.dtype == bool:
    return arr.astype(np.uint8) * 255
  if np.issubdtype(arr.dtype, np.floating):
    arr = np.nan_to_num(arr)
    scale = 255.0 if arr.size and arr.max() <= 1.0 else 1.0
    return np.clip(np.round(arr * scale), 0, 255).astype(np.uint8)
  if arr.dtype.itemsize > 1 and arr.size and arr.max() > 255:  # 16-bit data (or wider): rescale.
    return np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8)
  return np.clip(arr, 0, 255).astype(np.uint8)


def _array_to_image(arr: np.ndarray) -> Image.Image:
  if arr.ndim == 3 and arr.shape[-1] == 1:
    arr = arr[..., 0]
  if arr.size == 0 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (2, 3, 4)):
    raise BadExample(f'unusable image array of shape {arr.shape}')
  arr = _to_uint8(arr)
  mode = 'L' if arr.ndim == 2 else {2: 'LA', 3: 'RGB', 4: 'RGBA'}[arr.shape[-1]]
  return Image.fromarray(np.ascontiguousarray(arr), mode)


def convert(img: Image.Image, channels: int) -> Image.Image:
  """Decodes `img` and converts it to 'L' or 'RGB' (alpha dropped, CMYK/palette/16-bit mapped)."""
  try:
    img.load()
    if img.mode in ('I', 'F') or img.mode.startswith('I;'):  # 16/32-bit gray: PIL would clip.
      img = Image.fromarray(_to_uint8(np.asarray(img)), 'L')
    if img.mode in ('P', 'PA'):
      img = img.convert('RGBA')
    mode = target_mode(channels)
    return img if img.mode == mode else img.convert(mode)
  except _PIL_ERRORS as e:
    raise BadExample(f'undecodable image ({type(e).__name__}: {e})') from None


def jpeg_size(data) -> tuple[int, int] | None:
  """(width, height) from the header of JPEG bytes that decode_jpeg_box can decode (RGB or gray,
  extension built, end-of-image marker present), read in C without PIL; else None."""
  if (_jpegcrop is None or not isinstance(data, bytes) or data[:2] != b'\xff\xd8'
      or data.rfind(b'\xff\xd9', max(len(data) - _EOI_WINDOW, 0)) < 0):
    return None
  try:
    dims = _jpegcrop.size(data)
  except _jpegcrop.JpegError:
    return None  # PIL then decides, and names the problem.
  return dims if dims and dims[0] > 0 and dims[1] > 0 else None


def decode_jpeg_box(data, img: Image.Image | None, box: tuple[int, int, int, int],
                    scale: int = 1) -> np.ndarray | None:
  """RGB pixels [H, W, 3] uint8 of `box` = (left, top, right, bottom) of the JPEG `data`
  decoded at 1/`scale`.

  Decodes only the rows down to the box's bottom and the iMCU columns around it (the
  `_jpegcrop` extension); the pixels equal PIL's full decode cropped to the box. None when it
  cannot (extension not built, colour space such as CMYK, corrupt or truncated data, libjpeg
  warnings): the caller then decodes with PIL, whose verdict on damaged files stands.
  `img` is `data` opened by open_image (its header gives the mode), or None after jpeg_size
  accepted `data`.
  """
  global _warned_no_jpegcrop
  if _jpegcrop is None:
    if not _warned_no_jpegcrop:
      _warned_no_jpegcrop = True
      logging.getLogger(__name__).warning(
        'resnet_jax.data._jpegcrop is not built (%s): JPEGs are decoded whole with PIL (slower). '
        'Install libjpeg62-turbo-dev and reinstall (pip install -e .) to build it.',
        _JPEGCROP_IMPORT_ERROR)
    return None
  if img is not None and (img.format != 'JPEG' or img.mode not in ('RGB', 'L')):
    return None
  if not isinstance(data, bytes):
    data = bytes(data)
  if data.rfind(b'\xff\xd9', max(len(data) - _EOI_WINDOW, 0)) < 0:
    return None  # No end-of-image marker: maybe truncated below the box, which PIL would reject.
  left, top, right, bottom = box
  out = np.empty((bottom - top, right - left, 3), np.uint8)
  try:
    if not _jpegcrop.decode_crop_into(data, out, top, left, bottom - top, right - left, scale):
      return None
  except _jpegcrop.JpegError:
    return None
  return out
