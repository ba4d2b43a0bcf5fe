"""Fashion-MNIST (or MNIST) from IDX files, gzipped or not, e.g. Debian's dataset-fashion-mnist."""

import gzip
import os

import numpy as np

from resnet_jax.data.sources.base import LazyArrays, SourceMeta

DEFAULT_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                   'Sneaker', 'Bag', 'Ankle boot')
META = SourceMeta(num_classes=10, channels=1, class_names=FASHION_CLASSES)
_PREFIX = {'train': 'train', 'test': 't10k'}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4', 0x0E: '>f8'}


def find_file(directory: str, stem: str) -> str:
  """Path of `stem` or `stem.gz` in `directory`, or an error that says how to get the files."""
  for name in (stem, stem + '.gz'):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(
    f'IDX file {stem}[.gz] not found in {directory!r}. Install Debian\'s package '
    f'(apt-get install dataset-fashion-mnist, files in {DEFAULT_DIR}) or set data.dir to a folder '
    'holding the four Fashion-MNIST IDX files.')


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (magic 0x0000TTNN: type TT, NN dimensions) into an array."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise ValueError(f'{path} is not an IDX file (bad magic {raw[:4].hex()}); re-download it.')
  ndim = raw[3]
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  data = np.frombuffer(raw, _IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
  if data.size != int(np.prod(shape)):
    raise ValueError(f'{path} is truncated: header says {shape}, file holds {data.size} values.')
  return data.reshape(shape)


class IdxSource(LazyArrays):
  """One split ('train' | 'test') of an IDX dataset as uint8 (28, 28, 1) images."""

  def __init__(self, directory: str, split: str):
    if split not in _PREFIX:
      raise ValueError(f'IDX datasets have splits {tuple(_PREFIX)}, got {split!r}; set '
                       'data.train_split / data.eval_split accordingly.')
    self.directory = directory or DEFAULT_DIR
    self.split = split
    self._len = len(self._arrays()[1])

  def _load(self):
    prefix = _PREFIX[self.split]
    images = read_idx(find_file(self.directory, f'{prefix}-images-idx3-ubyte'))
    labels = read_idx(find_file(self.directory, f'{prefix}-labels-idx1-ubyte'))
    if len(images) != len(labels):
      raise ValueError(f'{self.directory}: {len(images)} images but {len(labels)} labels in split '
                       f'{self.split!r}; the IDX files do not belong together.')
    return images, labels

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int):
    images, labels = self._arrays()
    return {'image': images[index][..., None], 'label': int(labels[index]),
            'id': f'{self.split}/{index}'}
