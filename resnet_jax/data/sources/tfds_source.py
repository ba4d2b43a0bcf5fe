"""Any TFDS dataset through `tfds.data_source` (array_record files; no TensorFlow needed)."""

from resnet_jax.data.sources.base import SourceMeta


def _tfds():
  import tensorflow_datasets as tfds  # Imported here: slow, and only needed for TFDS names.

  return tfds


def meta(name: str, data_dir: str) -> SourceMeta:
  """Label count/names and channel count from the dataset's registered features."""
  features = _tfds().builder(name, data_dir=data_dir or None).info.features
  for key in ('image', 'label'):
    if key not in features:
      raise ValueError(f'TFDS dataset {name!r} has no {key!r} feature (it has {list(features)}); '
                       'only image classification datasets are supported as data.name.')
  label = features['label']
  names = tuple(label.names) if getattr(label, 'names', None) else None
  channels = features['image'].shape[-1] or 3
  return SourceMeta(num_classes=int(label.num_classes), channels=int(channels), class_names=names)


class TfdsSource:
  """Decoded records of one split; reopened lazily after pickling into a grain worker."""

  def __init__(self, name: str, split: str, data_dir: str):
    self.name = name
    self.split = split
    self.data_dir = data_dir or None
    self._ds = self._open()
    self._len = len(self._ds)

  def _open(self):
    tfds = _tfds()
    try:
      return tfds.data_source(self.name, split=self.split, data_dir=self.data_dir, download=False)
    except Exception as e:  # TFDS raises many types here; all mean "not prepared or no such split".  # noqa: BLE001
      raise FileNotFoundError(
        f'TFDS dataset {self.name!r} split {self.split!r} is not prepared in data.dir='
        f'{self.data_dir!r} ({type(e).__name__}: {e}). Prepare it once with `tfds build '
        f'{self.name} --data_dir=DIR --file_format=array_record` (imagenet2012 also needs '
        '--manual_dir holding ILSVRC2012_img_{train,val}.tar), then set data.dir=DIR.') from e

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_ds'] = None
    return state

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int):
    if self._ds is None:
      self._ds = self._open()
    record = self._ds[index]
    rid = record.get('id', record.get('file_name', None))
    if isinstance(rid, bytes):
      rid = rid.decode(errors='replace')
    return {'image': record['image'], 'label': int(record['label']),
            'id': str(rid) if rid is not None else f'{self.name}/{self.split}/{index}'}
