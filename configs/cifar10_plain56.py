"""Plain-56 (ResNet-56 without shortcuts) on CIFAR-10, the paper's comparison baseline."""

from configs import cifar10_common


def get_config():
  config = cifar10_common.get_config('cifar_plain56')
  return config
