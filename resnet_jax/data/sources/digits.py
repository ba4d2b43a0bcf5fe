"""scikit-learn's 8x8 digits (ships in the wheel): the zero-download default dataset."""

import numpy as np

from resnet_jax.data.sources.base import LazyArrays, SourceMeta

META = SourceMeta(num_classes=10, channels=1, class_names=tuple(str(i) for i in range(10)))
# Digits has no official split. Test = every 6th example of each class in file order
# (ranks 5, 11, 17, ...): stratified, deterministic, independent of any RNG or library version.
TEST_EVERY = 6
SPLITS = ('train', 'test', 'all')


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
  """Indices of `split` ('train' 1,501 | 'test' 296 | 'all' 1,797) into the digits arrays."""
  if split not in SPLITS:
    raise ValueError(f'digits has splits {SPLITS}, got data split {split!r}; set '
                     'data.train_split / data.eval_split to one of them.')
  if split == 'all':
    return np.arange(len(labels))
  rank = np.zeros(len(labels), np.int64)
  for c in np.unique(labels):
    where = np.flatnonzero(labels == c)
    rank[where] = np.arange(len(where))
  is_test = rank % TEST_EVERY == TEST_EVERY - 1
  return np.flatnonzero(is_test if split == 'test' else ~is_test)


class DigitsSource(LazyArrays):
  """One split of the digits as uint8 (8, 8, 1) images scaled from 0..16 to 0..255."""

  def __init__(self, split: str):
    self.split = split
    self._len = len(self._arrays()[1])

  def _load(self):
    from sklearn.datasets import load_digits  # Imported here: sklearn is slow to import.

    digits = load_digits()
    idx = split_indices(digits.target, self.split)
    # 16 is the maximum ink value: map it to 255 so that /255 later gives exactly 0..1.
    images = np.round(digits.images[idx] * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, digits.target[idx].astype(np.int64), idx

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int):
    images, labels, idx = self._arrays()
    return {'image': images[index], 'label': int(labels[index]), 'id': f'digits/{idx[index]}'}
