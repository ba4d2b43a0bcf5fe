"""Synthetic uniform-noise images of any size, channel and class count, for benchmarks."""

import zlib

import numpy as np

from resnet_jax.data.sources.base import SourceMeta


def meta(num_classes: int, channels: int = 3) -> SourceMeta:
  """Metadata of a fake dataset."""
  return SourceMeta(num_classes=num_classes, channels=channels)


class FakeSource:
  """Deterministic noise images: record i of a split is always the same, nothing is stored."""

  def __init__(self, split: str, num_examples: int, num_classes: int, shape: tuple[int, ...]):
    if num_examples <= 0 or num_classes <= 0:
      raise ValueError(f'fake data needs data.fake_num_examples > 0 and data.fake_num_classes > 0, '
                       f'got {num_examples} and {num_classes}.')
    self.split = split
    self.num_examples = num_examples
    self.num_classes = num_classes
    self.shape = tuple(shape)
    self._split_key = zlib.crc32(split.encode())  # Different splits, different images.

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int):
    rng = np.random.default_rng([self._split_key, index])
    image = rng.integers(0, 256, self.shape, dtype=np.uint8)
    return {'image': image, 'label': int(rng.integers(self.num_classes)), 'id': f'fake/{index}'}
