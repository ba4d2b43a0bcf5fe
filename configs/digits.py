"""The embedded quick demo: scikit-learn's 8x8 digits (1,501 train / 296 test), no download.

python -m resnet_jax.main --config=configs/digits.py --workdir=/tmp/digits  (20-45 s on 2 CPU
cores). A ResNet-20 at 8x8 input (stages at 8, 4, 2 pixels) with a short cosine schedule.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'cifar_resnet20'
  config.batch_size = 64  # Small data: more updates per epoch; divisible by 8 simulated devices.
  # One CPU device: at 8x8 a step is mostly per-op overhead, which a second virtual device only
  # adds to (a rendezvous per BatchNorm). Whole demo, cache off, alternated: 42.9 and 38.6 s on
  # one device against 55.2 and 49.9 s on two (2026-12-07, a slow machine of this kind).
  config.cpu_devices = 1
  config.num_epochs = 30.0
  config.log_every_steps = 20
  config.eval_every_steps = 0  # Only at the end: keeps the demo inside its time budget.
  config.checkpoint.every_steps = 10_000  # Effectively only the final save.
  config.data.name = 'digits'
  config.data.image_size = 8  # Native size: no resizing.
  config.data.augment = 'none'  # Random crops of an 8x8 digit cut strokes off.
  config.optim.base_lr = 0.1
  config.optim.lr_batch_base = 64
  config.optim.warmup_epochs = 1.0
  config.optim.weight_decay = 5e-4
  return config
