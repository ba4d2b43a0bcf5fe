"""ResNet-110 on CIFAR-10 with the paper's recipe (see configs/cifar10_common.py)."""

from configs import cifar10_common


def get_config():
  config = cifar10_common.get_config('cifar_resnet110')
  # The paper: LR 0.01 until training error < 80% (~400 iterations), then back to 0.1.
  config.optim.warmup_steps = 400
  config.optim.warmup_init_lr = 0.01
  config.optim.warmup_mode = 'constant'
  return config
