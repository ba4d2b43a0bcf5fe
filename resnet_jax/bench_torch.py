"""The reference on the same machine: `python -m resnet_jax.bench torch` (needs the torch extra).

Times torchvision's model through the train step PERF_NOTES measured for peers (SGD Nesterov
0.9, weight decay 1e-4, cross-entropy, random data, `train()` mode), with the same
--steps/--warmup/--repeat and JSON keys as `bench train`, so that our speed can be stated as a
ratio to PyTorch's on whatever machine runs it: absolute img/s move 1.5x between two cloud
hosts of the same size, the ratio much less.
"""

import os
import statistics
import time


def add_arguments(parser) -> None:
  parser.add_argument('--model', default='resnet50', help='a torchvision.models name')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--image-size', type=int, default=224)
  parser.add_argument('--num-classes', type=int, default=1000)
  parser.add_argument('--memory-format', default='channels_last',
                      choices=('channels_last', 'contiguous'),
                      help='channels_last is torch\'s fast CPU layout for convolutions')
  # bench_train.DTYPES' names, written out: this module imports no JAX (torch's process).
  parser.add_argument('--dtype', default='float32', choices=('bfloat16', 'float32'),
                      help='compute dtype: bfloat16 runs the forward pass and the loss under '
                           'torch.autocast (parameters and BatchNorm stay float32), as '
                           'half_precision runs ours')
  parser.add_argument('--steps', type=int, default=5, help='timed steps (median reported)')
  parser.add_argument('--warmup', type=int, default=2,
                      help="untimed steps first (at least one: it records the logits' dtype)")
  parser.add_argument('--repeat', type=int, default=1, help='whole measurements; medians')


def _measure(args, torch, torchvision) -> tuple[float, str]:
  """(median step seconds, the logits' dtype: the compute dtype autocast gave)."""
  torch.manual_seed(0)
  model = getattr(torchvision.models, args.model)(num_classes=args.num_classes)
  images = torch.randn(args.batch, 3, args.image_size, args.image_size)
  labels = torch.randint(0, args.num_classes, (args.batch,))
  fmt = {'channels_last': torch.channels_last, 'contiguous': torch.contiguous_format}[
    args.memory_format]
  model, images = model.to(memory_format=fmt), images.to(memory_format=fmt)
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                        weight_decay=1e-4)
  model.train()

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=args.dtype == 'bfloat16'):
      logits = model(images)
      loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()
    opt.step()
    return str(logits.dtype)

  logits_dtype = step()  # the first warm-up step (untimed)
  for _ in range(args.warmup - 1):
    step()
  times = []
  for _ in range(args.steps):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
  return statistics.median(times), logits_dtype


def run(args) -> dict:
  try:
    import torch
    import torchvision
  except ImportError as e:
    raise SystemExit(f'bench torch needs the torch extra (pip install -e ".[torch]"): {e}') from e
  if not hasattr(torchvision.models, args.model):
    raise SystemExit(f'--model {args.model!r} is not a torchvision.models name')
  runs = [_measure(args, torch, torchvision) for _ in range(args.repeat)]
  step_s = statistics.median(step for step, _ in runs)
  return {
    'model': args.model, 'batch': args.batch, 'image_size': args.image_size,
    'memory_format': args.memory_format, 'dtype': args.dtype,
    'logits_dtype': runs[0][1].removeprefix('torch.'),  # bfloat16 when autocast took effect
    'torch': torch.__version__, 'threads': torch.get_num_threads(), 'repeats': args.repeat,
    'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''),  # malloc's (host_malloc.py)
    'step_s': step_s, 'images_per_sec': args.batch / step_s,
  }
