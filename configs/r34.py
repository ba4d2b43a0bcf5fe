"""ResNet-34 on ImageNet, the flax example's recipe (see configs/imagenet_common.py)."""

from configs import imagenet_common


def get_config():
  return imagenet_common.get_config('resnet34')
