"""What every source provides: random access to raw records, plus the dataset's metadata."""

import dataclasses
from typing import Any, Protocol


@dataclasses.dataclass(frozen=True)
class SourceMeta:
  """Facts about a dataset that do not depend on the split."""

  num_classes: int
  channels: int  # Channels of the images the pipeline yields (1 for grayscale sets, else 3).
  class_names: tuple[str, ...] | None = None


class Source(Protocol):
  """Random-access records: dict(image=bytes | uint8 array | None, label=int, id=str)."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> dict[str, Any]: ...


class LazyArrays:
  """Mixin: arrays loaded on first use and not pickled, so grain workers receive only paths."""

  _cache: Any = None

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_cache'] = None
    return state

  def _arrays(self):
    if self._cache is None:
      self._cache = self._load()
    return self._cache

  def _load(self):
    raise NotImplementedError
