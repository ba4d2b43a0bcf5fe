"""DatasetInfo: what the model and the train loop need to know about the data."""

import dataclasses

from resnet_jax.data import sources, stats


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Facts about the configured dataset and the batches the pipeline yields."""

  name: str
  num_classes: int
  num_examples: dict[str, int]  # Per split (train_split and eval_split).
  image_shape: tuple[int, int, int]  # (H, W, C) of the yielded batches, after resizing.
  class_names: list[str] | None
  mean: tuple[float, ...]  # Per channel, 0..1 scale.
  std: tuple[float, ...]


def dataset_info(data_config) -> DatasetInfo:
  """Describes the dataset named by `data_config` (opens its train and eval splits)."""
  meta = sources.source_meta(data_config)
  mean, std = stats.mean_std(sources.stats_name(data_config.name), meta.channels)
  splits = dict.fromkeys((data_config.train_split, data_config.eval_split))
  num_examples = {s: len(sources.open_split(data_config, s)) for s in splits if s}
  size = data_config.image_size
  return DatasetInfo(
    name=data_config.name,
    num_classes=meta.num_classes,
    num_examples=num_examples,
    image_shape=(size, size, meta.channels),
    class_names=list(meta.class_names) if meta.class_names else None,
    mean=tuple(mean),
    std=tuple(std),
  )
