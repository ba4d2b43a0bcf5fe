"""Users' own images laid out as root/<split>/<class>/<image file>."""

import os

from resnet_jax.data.sources.base import SourceMeta

EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm')


def _split_dir(root: str, split: str) -> str:
  path = os.path.join(root, split)
  if not os.path.isdir(path):
    found = []
    if os.path.isdir(root):
      found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    raise FileNotFoundError(
      f'ImageFolder split folder {path!r} does not exist (data.dir={root!r}, sub-folders found: '
      f'{found}); set data.train_split / data.eval_split to one of them '
      '(e.g. data.eval_split=val).')
  return path


def class_names(root: str, split: str = 'train') -> tuple[str, ...]:
  """Sorted class folder names of the train split (the label order for every split)."""
  split_dir = _split_dir(root, split)
  names = tuple(sorted(
    d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d))))
  if not names:
    raise FileNotFoundError(f'{split_dir!r} has no class sub-folders; expected '
                            f'{split_dir}/<class name>/<image files>.')
  return names


def meta(root: str, split: str = 'train') -> SourceMeta:
  """Metadata: classes from root/<split>; images are always converted to RGB."""
  names = class_names(root, split)
  return SourceMeta(num_classes=len(names), channels=3, class_names=names)


class ImageFolderSource:
  """Encoded image files of one split; labels follow the class order of the train split."""

  def __init__(self, root: str, split: str, classes: tuple[str, ...]):
    split_dir = _split_dir(root, split)
    index = {name: i for i, name in enumerate(classes)}
    self.files: list[tuple[str, int]] = []
    for name in sorted(os.listdir(split_dir)):
      class_dir = os.path.join(split_dir, name)
      if not os.path.isdir(class_dir):
        continue
      # A class folder missing from the train split gets label -1, reported later as a bad label.
      label = index.get(name, -1)
      for file in sorted(os.listdir(class_dir)):
        if file.lower().endswith(EXTENSIONS):
          self.files.append((os.path.join(class_dir, file), label))
    if not self.files:
      raise FileNotFoundError(f'no image files ({", ".join(EXTENSIONS)}) under {split_dir!r}.')

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int):
    path, label = self.files[index]
    try:
      with open(path, 'rb') as f:
        image = f.read()
    except OSError as e:  # Reported as a bad example by the decoder, with this reason.
      return {'image': None, 'label': label, 'id': path, 'error': f'unreadable: {e}'}
    return {'image': image, 'label': label, 'id': path}
