"""Plain-32 (ResNet-32 without shortcuts) on CIFAR-10, the paper's comparison baseline."""

from configs import cifar10_common


def get_config():
  config = cifar10_common.get_config('cifar_plain32')
  return config
