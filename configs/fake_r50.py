"""Throughput benchmark: ResNet-50 on random 224x224 data (no input cost), bf16, no eval."""

from configs import imagenet_common


def get_config():
  config = imagenet_common.get_config('resnet50')
  config.data.name = 'fake'
  config.data.fake_num_examples = 4096
  config.data.fake_num_classes = 1000
  config.data.num_workers = 0
  config.data.augment = 'none'
  config.half_precision = True
  config.batch_size = 64  # Per benchmark machine; override with --config.batch_size.
  config.total_steps = 50
  config.log_every_steps = 10
  config.eval_every_steps = 0
  config.checkpoint.every_steps = 1_000_000  # Benchmarks measure steps, not checkpoint writes.
  return config
