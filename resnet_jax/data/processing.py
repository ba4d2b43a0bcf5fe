"""Per-example processing: raw record -> image (normalised float32, or uint8 pixels with
`normalize=False`), label, validity flag and id.

Runs inside grain workers, so failures become a `valid=False` flag (counted in the main process by
guard.py) instead of exceptions that would kill a worker.
"""

import dataclasses
import functools

import numpy as np
from PIL import Image

from resnet_jax.data import decode, randaugment, transforms

AUGMENTS = ('imagenet', 'cifar', 'none')


@dataclasses.dataclass(frozen=True)
class Processor:
  """Picklable per-example transform; train examples get randomness from the rng grain passes."""

  image_size: int
  channels: int
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augment: str = 'none'
  train: bool = False
  randaugment: tuple[int, int] | None = None
  use_draft: bool = True
  # Decode JPEGs only around the random-resized crop (decode._jpegcrop; same pixels as PIL's).
  partial_decode: bool = True
  # False: yield the uint8 pixels [H, W, C] and leave (x / 255 - mean) / std to the device (4x less
  # host memory and host-to-device transfer, no per-pixel float work on the host).
  normalize: bool = True
  crop_padding: int = transforms.CIFAR_PAD  # augment='cifar': zero padding before the crop.
  random_erasing: float = 0.0  # Probability of Random Erasing (train only; 0 = off).

  def __post_init__(self):
    if self.augment not in AUGMENTS:
      raise ValueError(f'data.augment={self.augment!r}; choose one of {AUGMENTS}.')

  @property
  def shape(self) -> tuple[int, int, int]:
    return self.image_size, self.image_size, self.channels

  def __call__(self, record, rng: np.random.Generator | None = None) -> dict:
    if record.get('padding'):  # Eval padding: a placeholder that the mask hides.
      return self._output(None, 0, valid=True, rid='', error='', mask=False)
    rid = str(record.get('id', ''))
    label = int(record['label'])
    error = record.get('error', '')
    if not error and not 0 <= label < self.num_classes:
      error = f'label {label} out of range [0, {self.num_classes})'
    image = None
    if not error:
      try:
        image = self.image(record['image'], rng)
      except decode.BadExample as e:
        error = str(e)
    return self._output(image, label if not error else 0, valid=not error, rid=rid, error=error,
                        mask=not error)

  def image(self, data, rng: np.random.Generator | None) -> np.ndarray:
    """Raw image -> [H, W, C] augmented when training; float32 normalised, or uint8 pixels."""
    size = self.image_size
    fast = self.partial_decode and self.channels == 3 and self.augment == 'imagenet'
    # RGB/gray JPEGs: the header read in C, no PIL at all unless a DCT reduction applies.
    dims = decode.jpeg_size(data) if fast else None
    img = decode.open_image(data) if dims is None else None
    if self.augment == 'imagenet':
      width, height = dims or img.size
      flip = False
      if self.train:
        box = transforms.sample_crop_box(rng, width, height)
        flip = transforms.draw_flip(rng)  # Drawn here, done by the resize: the same stream.
      else:
        box = transforms.center_crop_box(width, height)
      pixels = None
      if dims is not None and not (self.use_draft and transforms.draft_scale(*box[2:], size) > 1):
        pixels = transforms.jpeg_resized_crop(data, dims, box, size, flip)
      if pixels is None:
        pixels = transforms.resized_crop(
            img or decode.open_image(data), box, size, self.channels, use_draft=self.use_draft,
            data=data if self.partial_decode else None, flip=flip)
      img = None
    else:
      img = transforms.fit(decode.convert(img, self.channels), size)
      if self.train and self.augment == 'cifar':
        img = transforms.pad_random_crop(img, rng, self.crop_padding)
      if self.train and self.augment != 'none':
        img = transforms.random_flip(img, rng)
    if self.train and self.randaugment:
      if img is None:
        img = Image.fromarray(pixels[..., 0] if self.channels == 1 else pixels)
      img = randaugment.rand_augment(img, rng, *self.randaugment)
    if img is not None:
      pixels = np.asarray(img)
    if self.train and self.random_erasing:
      pixels = transforms.random_erasing(pixels.reshape(self.shape), rng, self.random_erasing)
    return self.normalise(pixels) if self.normalize else pixels.reshape(self.shape)

  @functools.cached_property
  def _row_constants(self) -> tuple[np.ndarray, np.ndarray]:
    # Per-channel 1 / (255 std) and -mean / std tiled along a row of W * C values: the same
    # float32 operations as per channel, without numpy's slow length-C inner loops. Computed once
    # per Processor (cached_property writes the instance dict, which a frozen dataclass allows).
    scale = np.asarray([1.0 / (255.0 * s) for s in self.std], np.float32)
    bias = np.asarray([-m / s for m, s in zip(self.mean, self.std, strict=True)], np.float32)
    return np.tile(scale, self.image_size), np.tile(bias, self.image_size)

  def normalise(self, pixels: np.ndarray) -> np.ndarray:
    """uint8 [H, W(, C)] -> float32 (x / 255 - mean) / std, shape [H, W, C]."""
    h, w, c = self.shape
    scale, bias = self._row_constants
    out = pixels.reshape(h, w * c).astype(np.float32)
    out *= scale
    out += bias
    return out.reshape(self.shape)

  def _output(self, image, label, *, valid, rid, error, mask) -> dict:
    if image is None:
      image = np.zeros(self.shape, np.float32 if self.normalize else np.uint8)
    return {'image': image, 'label': np.int32(label), 'valid': np.bool_(valid), 'id': rid,
            'error': error, 'mask': np.bool_(mask)}


def normalize_pixels(images, mean, std):
  """(x / 255 - mean) / std of uint8 [..., C] pixels -> float32; for numpy or jax.numpy arrays.

  With data.host_normalize=False the pipeline yields uint8 images: call this on them inside the
  jitted step (mean, std from `pipeline.mean_std(data_config)`). It matches Processor.normalise.
  """
  scale = [1.0 / (255.0 * s) for s in std]
  bias = [-m / s for m, s in zip(mean, std, strict=True)]
  if isinstance(images, np.ndarray):
    return images.astype(np.float32) * np.asarray(scale, np.float32) + np.asarray(bias, np.float32)
  import jax.numpy as jnp

  return (images.astype(jnp.float32) * jnp.asarray(scale, jnp.float32)
          + jnp.asarray(bias, jnp.float32))
