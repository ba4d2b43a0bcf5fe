"""Progressive resizing: train at smaller sizes early and at data.image_size late (FFCV, fast.ai).

`config.data.resize_schedule = 'SIZE:EPOCH,SIZE:EPOCH,…'` trains on SIZE x SIZE images from
EPOCH on (each entry until the next), and at `data.image_size` before the first EPOCH.
Convolution cost grows with the pixel count, so early epochs at 0.7x the side cost half as
much. Evaluation is always at `image_size`: end on it (the net then finishes at the size it is
tested at), or end a little below it to use the train/test resolution effect (FixRes).

The input pipeline is not touched: batches still arrive at `image_size` and the jitted train
step resizes them on the device (antialiased bilinear, after pixel normalisation), so the
pipeline's checkpointed iterator state, sharding and multi-host order stay exactly as without a
schedule. The size is a function of the step alone: every process switches at the same step,
and a resumed run trains at the size the interrupted one would have.
"""

import bisect
from collections.abc import Sequence

import jax

FIELD = 'data.resize_schedule'


def parse(text: str) -> tuple[tuple[float, int], ...]:
  """'20:0,24:8,28:14' -> ((0.0, 20), (8.0, 24), (14.0, 28)); '' -> (). ValueError if bad."""
  if not text.strip():
    return ()
  entries = []
  for item in text.split(','):
    size_text, sep, epoch_text = item.strip().partition(':')
    try:
      size, epoch = int(size_text), float(epoch_text)
    except ValueError:
      raise ValueError(f'entry {item.strip()!r} is not SIZE:EPOCH (e.g. 20:0)') from None
    if not sep or size < 1 or epoch < 0:
      raise ValueError(f'entry {item.strip()!r} needs a size >= 1 and an epoch >= 0')
    if entries and epoch <= entries[-1][0]:
      raise ValueError(f'epoch {epoch:g} of {item.strip()!r} does not come after '
                       f'{entries[-1][0]:g}; list entries in increasing epochs')
    entries.append((epoch, size))
  return tuple(entries)


def step_boundaries(schedule: Sequence[tuple[float, int]], image_size: int,
                    steps_per_epoch: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(first step index of each phase, its size), with a leading image_size phase from step 0."""
  starts, sizes = [0], [image_size]
  for epoch, size in schedule:
    start = int(round(epoch * steps_per_epoch))
    if start == starts[-1]:  # A phase at step 0 (or two rounding onto one step): the later wins.
      sizes[-1] = size
    else:
      starts.append(start)
      sizes.append(size)
  return tuple(starts), tuple(sizes)


def size_at(boundaries: tuple[tuple[int, ...], tuple[int, ...]], step_index: int) -> int:
  """Train size of the update with 0-based index `step_index`."""
  starts, sizes = boundaries
  return sizes[bisect.bisect_right(starts, step_index) - 1]


def resize_images(images: jax.Array, size: int) -> jax.Array:
  """NHWC float images resized to size x size: antialiased bilinear (a no-op at their size)."""
  if images.shape[1:3] == (size, size):
    return images
  shape = (images.shape[0], size, size, images.shape[3])
  return jax.image.resize(images, shape, method='linear', antialias=True)
