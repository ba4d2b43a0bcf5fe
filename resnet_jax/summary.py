"""Layer table of a model: name, output shape, parameters and multiply-accumulates.

    python -m resnet_jax.summary --model resnet50 [--image-size 224] [--depth 1]

Nothing is computed: shapes come from `jax.eval_shape`, so even ResNet-200 prints in seconds.
MACs count convolutions and the classifier (what torchvision's model table and fvcore report);
BatchNorm, ReLU, pooling and additions are left out as they are there.
"""

import argparse
import dataclasses
import math
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from resnet_jax.models import create_model, list_models


@dataclasses.dataclass
class Row:
  name: str  # module path joined by '/'
  kind: str  # class name of the module
  output_shape: tuple
  params: int
  macs: int


def _layer_macs(module: nn.Module, inputs, output) -> int:
  if isinstance(module, nn.Conv):
    kh, kw = module.kernel_size
    in_features = inputs[0].shape[-1]
    per_output = kh * kw * in_features // module.feature_group_count
    return math.prod(output.shape[1:]) * per_output
  if isinstance(module, nn.Dense):
    return inputs[0].shape[-1] * output.shape[-1]
  return 0


def summarize(model: nn.Module, input_shape: tuple, depth: int = 1) -> tuple[list[Row], dict]:
  """Rows for modules `depth` levels deep (0 = every layer) and totals, for one example."""
  calls = []  # (path, kind, output shape, macs) of every module call, in call order
  # Paths whose __call__ is running: a subclass calling super().__call__ (our Conv -> nn.Conv)
  # is one layer, recorded once.
  active = set()

  def record(next_fun, args, kwargs, context):
    path = context.module.path
    if context.method_name != '__call__' or not path or path in active:
      return next_fun(*args, **kwargs)
    active.add(path)
    try:
      out = next_fun(*args, **kwargs)
    finally:
      active.discard(path)
    shape = out.shape if hasattr(out, 'shape') else ()
    calls.append((path, type(context.module).__name__, tuple(shape),
                  _layer_macs(context.module, args, out)))
    return out

  x = jnp.zeros(input_shape, jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  with nn.intercept_methods(record):
    jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)

  params = traverse_util.flatten_dict(variables['params'])
  leaves = [c for c in calls if c[1] in ('Conv', 'Dense', 'BatchNorm')]

  def under(prefix):
    return lambda path: path[: len(prefix)] == prefix

  shown = leaves if depth == 0 else [c for c in calls if len(c[0]) == depth]
  rows = []
  for path, kind, shape, _ in shown:
    inside = under(path)
    rows.append(Row(
      name='/'.join(path), kind=kind, output_shape=shape,
      params=sum(math.prod(v.shape) for k, v in params.items() if inside(k)),
      macs=sum(c[3] for c in leaves if inside(c[0])),
    ))
  totals = {
    'params': sum(math.prod(v.shape) for v in params.values()),
    'batch_stats': sum(
      math.prod(v.shape) for v in jax.tree.leaves(variables.get('batch_stats', {}))
    ),
    'macs': sum(c[3] for c in leaves),
  }
  return rows, totals


def format_table(rows: list[Row], totals: dict, title: str) -> str:
  header = ('Layer', 'Type', 'Output shape', 'Params', 'MACs')
  body = [(r.name, r.kind, str(list(r.output_shape)), f'{r.params:,}', f'{r.macs:,}') for r in rows]
  widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
            for i, h in enumerate(header)]
  line = '  '.join
  rule = '-' * (sum(widths) + 2 * (len(widths) - 1))
  out = [title, rule, line([h.rjust(w) if i > 2 else h.ljust(w)
                            for i, (h, w) in enumerate(zip(header, widths))]), rule]
  for b in body:
    out.append(line([b[0].ljust(widths[0]), b[1].ljust(widths[1]), b[2].ljust(widths[2]),
                     b[3].rjust(widths[3]), b[4].rjust(widths[4])]))
  out += [
    rule,
    f'Total params: {totals["params"]:,}',
    f'Trainable params: {totals["params"]:,}',
    f'Non-trainable (BatchNorm statistics): {totals["batch_stats"]:,}',
    f'MACs: {_si(totals["macs"])}',
  ]
  return '\n'.join(out)


def _si(n: int) -> str:
  return f'{n / 1e9:.2f} G' if n >= 1e9 else f'{n / 1e6:.2f} M'


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', required=True, help='a name from list_models(); "list" lists')
  parser.add_argument('--image-size', type=int, default=None,
                      help='input side in pixels (default 224; 32 for CIFAR-style models)')
  parser.add_argument('--channels', type=int, default=3, help='input channels')
  parser.add_argument('--num-classes', type=int, default=None, help='override the classifier')
  parser.add_argument('--depth', type=int, default=1,
                      help='1: stem layers and blocks; 2: inside blocks; 0: every layer')
  args = parser.parse_args(argv)
  if args.model == 'list':
    print('\n'.join(list_models()))
    return 0
  try:
    overrides = {} if args.num_classes is None else {'num_classes': args.num_classes}
    model = create_model(args.model, **overrides)
  except (ValueError, TypeError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  # Only ResNets have a `stem`; every other family is an ImageNet-sized network.
  size = args.image_size or (32 if getattr(model, 'stem', None) == 'cifar' else 224)
  rows, totals = summarize(model, (1, size, size, args.channels), args.depth)
  print(format_table(rows, totals, f'{args.model} at {size}x{size}x{args.channels}'))
  return 0


if __name__ == '__main__':
  sys.exit(main())
