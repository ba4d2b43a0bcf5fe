"""Plain-110 (ResNet-110 without shortcuts) on CIFAR-10, the paper's comparison baseline."""

from configs import cifar10_common


def get_config():
  config = cifar10_common.get_config('cifar_plain110')
  # The paper: LR 0.01 until training error < 80% (~400 iterations), then back to 0.1.
  config.optim.warmup_steps = 400
  config.optim.warmup_init_lr = 0.01
  config.optim.warmup_mode = 'constant'
  return config
