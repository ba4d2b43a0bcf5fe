"""Per-channel mean/std (0..1 scale) used to normalise each dataset's images."""

# ImageNet's standard values (torchvision's), also used for ImageFolder data and unknown RGB sets.
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

MEAN_STD = {
  'imagenet2012': IMAGENET,
  'image_folder': IMAGENET,
  # Published CIFAR train-set statistics (per-pixel std, not the often-quoted per-image 0.20).
  'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
  'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
  'mnist': ((0.1307,), (0.3081,)),
  # Computed once from the 60,000 train images of the IDX files (/usr/share/datasets/fashion-mnist).
  'fashion_mnist': ((0.2860,), (0.3530,)),
  # Computed once from all 1,797 scikit-learn digits after scaling 0..16 to 0..1.
  'digits': ((0.3053,), (0.3760,)),
  # Fake images are uniform noise; 0.5/0.5 maps them to about [-1, 1].
  'fake': ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def mean_std(name: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Returns (mean, std) for a dataset, falling back to ImageNet's (RGB) or 0.5 (other)."""
  if name in MEAN_STD and len(MEAN_STD[name][0]) == channels:
    return MEAN_STD[name]
  if channels == 3:
    return IMAGENET
  return (0.5,) * channels, (0.5,) * channels
