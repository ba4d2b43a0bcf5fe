"""Plain-44 (ResNet-44 without shortcuts) on CIFAR-10, the paper's comparison baseline."""

from configs import cifar10_common


def get_config():
  config = cifar10_common.get_config('cifar_plain44')
  return config
