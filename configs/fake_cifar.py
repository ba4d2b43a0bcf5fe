"""Throughput benchmark: CIFAR ResNet-20 on random 32x32 data, fp32, no eval."""

from configs import cifar10_common


def get_config():
  config = cifar10_common.get_config('cifar_resnet20')
  config.data.name = 'fake'
  config.data.fake_num_examples = 4096
  config.data.fake_num_classes = 10
  config.data.augment = 'none'
  config.total_steps = 50
  config.log_every_steps = 10
  config.eval_every_steps = 0
  config.checkpoint.every_steps = 1_000_000  # Benchmarks measure steps, not checkpoint writes.
  return config
