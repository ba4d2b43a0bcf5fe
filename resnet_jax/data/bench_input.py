"""Input throughput: the ImageNet train transform on real JPEGs, and Fashion-MNIST batches.

Rates are per core: images divided by the CPU seconds the process used (all its threads), so they
do not depend on how busy the machine's other cores are.
"""

import os
import statistics
import time

import ml_collections

from resnet_jax.data import decode, stats, transforms
from resnet_jax.data.processing import Processor


def add_arguments(parser) -> None:
  """Options of `bench input`."""
  parser.add_argument('--seconds', type=float, default=3.0, help='time per measurement')
  parser.add_argument('--image-size', type=int, default=224, help='ImageNet output side')
  parser.add_argument('--fashion-dir', default='', help="IDX folder ('' = Debian's)")
  parser.add_argument('--repeat', type=int, default=3,
                      help='rounds over all ImageNet variants, interleaved; medians reported')


def _sample_jpegs() -> dict[str, bytes]:
  import sklearn  # The wheel ships two 640x427 photos.

  folder = os.path.join(os.path.dirname(sklearn.__file__), 'datasets', 'images')
  out = {}
  for name in ('china.jpg', 'flower.jpg'):
    with open(os.path.join(folder, name), 'rb') as f:
      out[name] = f.read()
  return out


def _measure(step, seconds: float) -> dict:
  """Calls step() (-> images done) until `seconds` of wall time pass; rates per CPU second."""
  step()  # Warm-up (imports, caches).
  images = 0
  wall, cpu = time.perf_counter(), time.process_time()
  while time.perf_counter() - wall < seconds:
    images += step()
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return {'images': images, 'wall_seconds': round(wall, 3), 'cpu_seconds': round(cpu, 3),
          'images_per_sec': round(images / wall, 1),
          'images_per_sec_per_core': round(images / max(cpu, 1e-9), 1)}


def bench_imagenet_transform(seconds: float, image_size: int, use_draft: bool,
                             normalize: bool = True, partial_decode: bool = True) -> dict:
  """Random-resized crop + flip (+ normalise) of the two sample photos, one thread."""
  import numpy as np

  mean, std = stats.IMAGENET
  proc = Processor(image_size=image_size, channels=3, num_classes=1000, mean=mean, std=std,
                   augment='imagenet', train=True, use_draft=use_draft,
                   normalize=normalize, partial_decode=partial_decode)
  photos = list(_sample_jpegs().values())
  rng = np.random.default_rng(0)
  state = {'i': 0}

  def step():
    state['i'] += 1
    proc.image(photos[state['i'] % len(photos)], rng)
    return 1

  return _measure(step, seconds)


def bench_fashion_mnist(seconds: float, fashion_dir: str) -> dict:
  """Batches of 256 from the real train iterator (cifar augmentation, 28 -> 32, main process)."""
  from resnet_jax import data

  cfg = ml_collections.ConfigDict(dict(
    name='fashion_mnist', dir=fashion_dir, train_split='train', eval_split='test', image_size=32,
    augment='cifar', randaugment='', mixup_alpha=0.0, cutmix_alpha=0.0, num_workers=0, prefetch=2,
    max_skip_fraction=0.01, fake_num_examples=0, fake_num_classes=0))
  it = data.create_train_iterator(cfg, seed=0, global_batch_size=256)

  def step():
    return len(next(it)['label'])

  return _measure(step, seconds)


VARIANTS = (  # key: (use_draft, normalize, partial_decode)
  # uint8: data.host_normalize=False, the normalisation left to the device.
  # _pil: whole-image PIL decode (no partial decode; what runs without the _jpegcrop extension).
  ('imagenet_train_transform', True, True, True),
  ('imagenet_train_transform_no_draft', False, True, True),
  ('imagenet_train_transform_uint8', True, False, True),
  ('imagenet_train_transform_pil', True, True, False),
  ('imagenet_train_transform_uint8_pil', True, False, False),
)


def run(args) -> dict:
  """The ImageNet variants in `--repeat` interleaved rounds (medians), then Fashion-MNIST."""
  rounds = {key: [] for key, *_ in VARIANTS}
  for r in range(args.repeat):
    for key, use_draft, normalize, partial in VARIANTS:
      print(f'[bench input] round {r + 1}/{args.repeat} {key}: {args.image_size}px crops of '
            f'640x427 JPEGs, {args.seconds}s ...', flush=True)
      rounds[key].append(bench_imagenet_transform(args.seconds, args.image_size, use_draft,
                                                  normalize, partial))
  results = {}
  for key, runs in rounds.items():
    rates = [m['images_per_sec_per_core'] for m in runs]
    results[key] = {'images_per_sec_per_core': statistics.median(rates),
                    'images_per_sec': statistics.median(m['images_per_sec'] for m in runs),
                    'rounds_images_per_sec_per_core': rates}
  results['jpeg_partial_decode'] = decode._jpegcrop is not None
  results['fast_resize'] = transforms._resize is not None
  print(f'[bench input] fashion_mnist_batches: batches of 256, {args.seconds}s ...', flush=True)
  try:
    results['fashion_mnist_batches'] = bench_fashion_mnist(args.seconds, args.fashion_dir)
  except FileNotFoundError as e:
    results['fashion_mnist_batches'] = {'skipped': str(e)}
  results['cpu_count'] = os.cpu_count()
  return results
