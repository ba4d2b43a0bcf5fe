"""ResNet-20 on CIFAR-10 with the paper's recipe (see configs/cifar10_common.py)."""

from configs import cifar10_common


def get_config():
  config = cifar10_common.get_config('cifar_resnet20')
  return config
