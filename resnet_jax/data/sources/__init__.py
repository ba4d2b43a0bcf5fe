"""Dataset name -> source of raw records and its metadata."""

from resnet_jax.data.sources import digits, fake, idx, image_folder, tfds_source
from resnet_jax.data.sources.base import Source, SourceMeta

# Built-in names; any other name (or 'tfds:NAME', to force TFDS for e.g. fashion_mnist) is TFDS.
BUILTIN = ('digits', 'fashion_mnist', 'fake', 'image_folder')
TFDS_PREFIX = 'tfds:'

__all__ = ['BUILTIN', 'Source', 'SourceMeta', 'open_split', 'source_meta', 'stats_name']


def _tfds_name(name: str) -> str | None:
  if name.startswith(TFDS_PREFIX):
    return name[len(TFDS_PREFIX):]
  return None if name in BUILTIN else name


def stats_name(name: str) -> str:
  """Key of the dataset in stats.MEAN_STD."""
  return _tfds_name(name) or name


def source_meta(cfg) -> SourceMeta:
  """Metadata of the dataset named by data config `cfg`."""
  name = cfg.name
  if name == 'digits':
    return digits.META
  if name == 'fashion_mnist':
    return idx.META
  if name == 'fake':
    return fake.meta(cfg.fake_num_classes)
  if name == 'image_folder':
    _require_dir(cfg)
    return image_folder.meta(cfg.dir, cfg.train_split)
  return tfds_source.meta(_tfds_name(name), cfg.dir)


def open_split(cfg, split: str) -> Source:
  """Random-access raw records of `split` of the dataset named by data config `cfg`."""
  name = cfg.name
  if name == 'digits':
    return digits.DigitsSource(split)
  if name == 'fashion_mnist':
    return idx.IdxSource(cfg.dir, split)
  if name == 'fake':
    shape = (cfg.image_size, cfg.image_size, 3)
    return fake.FakeSource(split, cfg.fake_num_examples, cfg.fake_num_classes, shape)
  if name == 'image_folder':
    _require_dir(cfg)
    classes = image_folder.class_names(cfg.dir, cfg.train_split)
    return image_folder.ImageFolderSource(cfg.dir, split, classes)
  return tfds_source.TfdsSource(_tfds_name(name), split, cfg.dir)


def _require_dir(cfg) -> None:
  if not cfg.dir:
    raise ValueError('data.name=image_folder needs data.dir=ROOT with ROOT/<split>/<class>/*.jpg.')
