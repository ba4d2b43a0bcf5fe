"""grain pipelines: the infinite, checkpointable train iterator and the exact, padded eval pass."""

import math

import grain
import numpy as np

from resnet_jax.data import randaugment, sources, stats
from resnet_jax.data.guard import BadExampleGuard
from resnet_jax.data.mixing import MixBatch
from resnet_jax.data.processing import Processor, normalize_pixels

_READ_THREADS = 2  # Decoding threads per process (PIL releases the GIL while decoding).
# Examples in flight on the read threads. Kept small: on every example it returns, grain's
# thread prefetch walks its buffer of futures to record how many are ready, ~1 us each, under
# the GIL. Sized in batches (prefetch x batch = 256 examples), that walk was 44% of the input's
# Python time on Fashion-MNIST (py-spy); the depth in batches is `_prefetch_batches`'s.
_EXAMPLES_IN_FLIGHT = 8 * _READ_THREADS
# Separate streams for shuffling and augmentation, both derived from the one config seed.
_SHUFFLE_STREAM, _AUGMENT_STREAM = 0, 1


def host_normalize(cfg) -> bool:
  """data.host_normalize (default True): False yields uint8 images, normalised on the device."""
  return bool(cfg.get('host_normalize', True))


def mean_std(cfg) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std the images are normalised with (on the host or the device)."""
  mean, std = stats.mean_std(sources.stats_name(cfg.name), sources.source_meta(cfg).channels)
  return tuple(mean), tuple(std)


def zero_pixel(cfg) -> np.ndarray:
  """A black (0) pixel normalised [C]: what the CIFAR augmentation pads with, in the units the
  model sees, so translated test-time views fill their border as training's crops did."""
  mean, std = mean_std(cfg)
  return normalize_pixels(np.zeros(len(mean), np.uint8), mean, std)


def _processor(cfg, train: bool) -> Processor:
  meta = sources.source_meta(cfg)
  mean, std = stats.mean_std(sources.stats_name(cfg.name), meta.channels)
  return Processor(image_size=cfg.image_size, channels=meta.channels, num_classes=meta.num_classes,
                   mean=tuple(mean), std=tuple(std), augment=cfg.augment if train else
                   ('imagenet' if cfg.augment == 'imagenet' else 'none'), train=train,
                   randaugment=randaugment.parse(cfg.randaugment) if train else None,
                   normalize=host_normalize(cfg), crop_padding=cfg.get('crop_padding', 4),
                   random_erasing=cfg.get('random_erasing', 0.0) if train else 0.0)


def _per_process_batch(global_batch_size: int, process_index: int, process_count: int) -> int:
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} must be in [0, {process_count}) '
                     '(process_count).')
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f'batch_size={global_batch_size} must be a positive multiple of the process '
                     f'count {process_count}.')
  return global_batch_size // process_count


def _sub_seed(seed: int, stream: int) -> int:
  return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def _to_iter(ds: grain.MapDataset, cfg, batch: int) -> grain.IterDataset:
  """Decodes in the main process (threads) or in data.num_workers processes."""
  buffer = max(1, cfg.prefetch) * batch
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=_READ_THREADS,
                                            prefetch_buffer_size=_EXAMPLES_IN_FLIGHT))
  if cfg.num_workers > 0:
    from absl import flags

    # grain's workers read absl flags; a program without absl.app (pytest, notebooks) has not
    # parsed them, so use their defaults instead of failing inside the worker start-up.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    per_worker = max(1, math.ceil(buffer / cfg.num_workers))
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.num_workers,
                                                     per_worker_buffer_size=per_worker))
  return it


def _prefetch_batches(it: grain.IterDataset, cfg) -> grain.IterDataset:
  """data.prefetch whole batches assembled ahead on a background thread (checkpointable: the
  state saved is the one of the last batch handed out). The train loop's thread then only
  takes a ready batch between dispatching steps."""
  return grain.experimental.ThreadPrefetchIterDataset(
      it, prefetch_buffer_size=max(1, cfg.prefetch))


def _with_index(index: int, example: dict) -> dict:
  example['index'] = np.int64(index)
  return example


def _without_mask(example: dict) -> dict:
  example.pop('mask', None)
  return example


def create_train_iterator(data_config, *, seed: int, global_batch_size: int,
                          process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
  """Infinite per-process batches dict(image, label[, label_probs]); reshuffled every epoch."""
  cfg = data_config
  if not host_normalize(cfg) and cfg.mixup_alpha > 0:
    raise ValueError('data.mixup_alpha > 0 needs data.host_normalize=True (mixup blends images '
                     'into floats; uint8 output would not stay uint8).')
  batch = _per_process_batch(global_batch_size, process_index, process_count)
  source = sources.open_split(cfg, cfg.train_split)
  processor = _processor(cfg, train=True)
  # Equal shards: drop the (different every epoch) last n % process_count of each shuffled epoch.
  shard_len = len(source) // process_count
  if shard_len < batch:
    raise ValueError(f'split {cfg.train_split!r} has {len(source)} examples, fewer than one batch '
                     f'of {batch} per process; lower batch_size.')
  ds = grain.MapDataset.source(source).shuffle(seed=_sub_seed(seed, _SHUFFLE_STREAM))
  # Augmentation randomness keyed by (seed, epoch, position in the epoch's global order).
  ds = ds.random_map(processor, seed=_sub_seed(seed, _AUGMENT_STREAM))
  ds = ds[:shard_len * process_count][process_index::process_count]
  ds = ds.repeat(None).map_with_index(_with_index).map(_without_mask)
  it = _to_iter(ds, cfg, batch)
  it = BadExampleGuard(it, drop=True, max_skip_fraction=cfg.max_skip_fraction,
                       num_examples=shard_len, what=f'{cfg.name}/{cfg.train_split}')
  it = it.batch(batch, drop_remainder=True)
  it = it.map(MixBatch(num_classes=processor.num_classes, mixup_alpha=cfg.mixup_alpha,
                       cutmix_alpha=cfg.cutmix_alpha, seed=seed, process_index=process_index))
  return iter(_prefetch_batches(it, cfg))


PADDING = {'padding': True}  # Not None: grain drops None elements.


class _EvalShard:
  """Process `p`'s examples (indices p, p + P, ...) padded to `length` with PADDING records."""

  def __init__(self, source, process_index: int, process_count: int, length: int):
    self._source = source
    self._indices = range(process_index, len(source), process_count)
    self._length = length

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int):
    return self._source[self._indices[index]] if index < len(self._indices) else PADDING


def eval_num_batches(num_examples: int, batch: int, process_count: int) -> int:
  """Batches every process yields for an exact pass (the largest shard, rounded up)."""
  return max(1, math.ceil(math.ceil(num_examples / process_count) / batch))


def create_eval_iterator(data_config, *, split: str | None = None, global_batch_size: int,
                         process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
  """One exact pass: per-process batches dict(image, label, mask); same count on all processes."""
  cfg = data_config
  split = split or cfg.eval_split
  batch = _per_process_batch(global_batch_size, process_index, process_count)
  source = sources.open_split(cfg, split)
  num_batches = eval_num_batches(len(source), batch, process_count)
  shard = _EvalShard(source, process_index, process_count, num_batches * batch)
  ds = grain.MapDataset.source(shard).map(_processor(cfg, train=False))
  it = _to_iter(ds, cfg, batch)
  it = BadExampleGuard(it, drop=False, max_skip_fraction=cfg.max_skip_fraction,
                       num_examples=len(shard._indices), what=f'{cfg.name}/{split}')
  return iter(_prefetch_batches(it.batch(batch, drop_remainder=False), cfg))
