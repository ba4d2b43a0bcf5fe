"""Each convolution of a model timed alone, ours and torch's: `python -m resnet_jax.bench convs`.

A train step's convolutions are most of its time, and on CPU they run on a library kernel
(XLA:CPU's Eigen for kxk, YNNPACK's matmul for 1x1 through `conv_impl`) that a profile cannot
time (op_profile.py: the convolution's event ends at the hand-off). This benchmark collects the
model's convolutions as the train-mode forward pass calls them (input shape, kernel, stride,
padding, groups), times each distinct one on one device through the model's own lowering --
its forward pass, and its backward pass alone (input and kernel gradients; the kernel gradient
only where the input is the image, as in training) -- and, when torch is installed, torch's
convolution on the same shapes (channels_last, `aten.convolution_backward` for the backward),
one after the other per shape. Totals weight each shape by how often the model calls it, so the
result says how much of a step's gap to torch lies in the convolution kernels themselves.
"""

import math
import statistics

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import bench_train
from resnet_jax.models import create_model


def add_arguments(parser) -> None:
  parser.add_argument('--model', default='resnet50', help='a name from list_models()')
  parser.add_argument('--batch', type=int, default=16,
                      help='the batch each convolution sees (per device, as it runs)')
  parser.add_argument('--image-size', type=int, default=224)
  parser.add_argument('--num-classes', type=int, default=1000)
  parser.add_argument('--conv-impl', default='auto', help='auto | xla | matmul | cpu')
  parser.add_argument('--steps', type=int, default=10, help='timed calls per convolution (median)')
  parser.add_argument('--warmup', type=int, default=2, help='untimed calls first')
  parser.add_argument('--repeat', type=int, default=1,
                      help='rounds over every convolution; medians of the rounds reported')
  parser.add_argument('--no-torch', action='store_true', help='time ours only')
  parser.set_defaults(cpu_devices=1)  # One device: the convolution alone, with every core.


def _pads(module: nn.Conv, spatial: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
  """The module's padding as explicit (lo, hi) pairs for these input dimensions."""
  kernel = tuple(module.kernel_size)
  strides = module.strides or (1,) * len(kernel)
  strides = (strides,) * len(kernel) if isinstance(strides, int) else tuple(strides)
  padding = module.padding
  if isinstance(padding, str):
    dilation = module.kernel_dilation or 1
    dilation = (dilation,) * len(kernel) if isinstance(dilation, int) else tuple(dilation)
    dilated = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
    return tuple(tuple(p) for p in jax.lax.padtype_to_pads(spatial, dilated, strides, padding))
  if isinstance(padding, int):
    return ((padding, padding),) * len(kernel)
  return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


def _as_tuple(value, n: int) -> tuple[int, ...]:
  if value is None:
    return (1,) * n
  return (value,) * n if isinstance(value, int) else tuple(value)


def collect_convolutions(model: nn.Module, image_shape: tuple[int, ...]) -> list[dict]:
  """The distinct convolutions of `model`'s train-mode forward pass, with their call counts.

  Each entry: 'module' (an unbound copy of the layer), 'input' shape, 'kernel', 'features',
  'strides', 'padding', 'dilation', 'groups', 'bias', 'count', 'layers' (the paths calling it)
  and 'on_image' (its input is the model's input, so training needs no input gradient).
  """
  found: dict[tuple, dict] = {}
  active = set()  # A subclass calling super().__call__ (our Conv -> nn.Conv) is one call.

  def record(next_fun, args, kwargs, context):
    module, path = context.module, context.module.path
    if (context.method_name != '__call__' or not isinstance(module, nn.Conv)
        or path in active):
      return next_fun(*args, **kwargs)
    x = args[0]
    n = len(module.kernel_size)
    spec = dict(input=tuple(x.shape), kernel=tuple(module.kernel_size), features=module.features,
                strides=_as_tuple(module.strides, n), padding=_pads(module, x.shape[1:-1]),
                dilation=_as_tuple(module.kernel_dilation, n),
                groups=module.feature_group_count, bias=bool(module.use_bias),
                dtype=str(x.dtype), impl=getattr(module, 'impl', 'xla'),
                on_image=tuple(x.shape) == tuple(image_shape))
    key = tuple(sorted(spec.items()))
    entry = found.setdefault(key, {**spec, 'module': module.clone(parent=None, name=None),
                                   'count': 0, 'layers': []})
    entry['count'] += 1
    entry['layers'].append('/'.join(path))
    active.add(path)
    try:
      return next_fun(*args, **kwargs)
    finally:
      active.discard(path)

  x = jax.ShapeDtypeStruct(image_shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']),
                   variables, x)
  return list(found.values())


def forward_gflop(conv: dict, output_shape: tuple[int, ...]) -> float:
  """Multiply-adds x 2 of the forward pass (the backward's two gradients cost as much each)."""
  per_output = math.prod(conv['kernel']) * conv['input'][-1] // conv['groups']
  return 2 * math.prod(output_shape) * per_output / 1e9


def _median_ms(fn, steps: int, warmup: int) -> float:
  bench_train._time_steps(fn, warmup)
  return statistics.median(bench_train._time_steps(fn, steps)) * 1e3


def prepare_ours(conv: dict) -> tuple[tuple[int, ...], dict]:
  """The layer's own lowering, jitted, on random values: (output shape, {pass: callable})."""
  module = conv['module']
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(conv['input'], np.float32)).astype(conv['dtype'])
  shapes = jax.eval_shape(module.init, jax.random.key(0), x)
  params = jax.tree.map(
    lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32) * 0.05, s.dtype), shapes)
  forward = jax.jit(lambda p, x: module.apply(p, x))
  out = forward(params, x)
  grad = jnp.asarray(rng.standard_normal(out.shape, np.float32)).astype(out.dtype)
  if conv['on_image']:
    backward = jax.jit(lambda p, x, g: jax.vjp(lambda p: module.apply(p, x), p)[1](g))
  else:
    backward = jax.jit(lambda p, x, g: jax.vjp(module.apply, p, x)[1](g))
  return tuple(out.shape), {
    'forward': lambda: jax.block_until_ready(forward(params, x)),
    'backward': lambda: jax.block_until_ready(backward(params, x, grad)),
  }


def prepare_torch(conv: dict, torch) -> dict:
  """torch's convolution on the same shapes: channels_last, asymmetric padding applied beforehand
  (outside the timing), backward by `aten.convolution_backward` with the same gradients asked.
  {} for what it cannot express (other than 2-D)."""
  n, *spatial, c = conv['input']
  if len(spatial) != 2:
    return {}
  gen = torch.Generator().manual_seed(0)
  pads = conv['padding']
  symmetric = all(lo == hi for lo, hi in pads)
  x = torch.randn(n, c, *spatial, generator=gen)
  if not symmetric:  # F.pad takes the last dimension first.
    x = torch.nn.functional.pad(x, (pads[1][0], pads[1][1], pads[0][0], pads[0][1]))
  padding = [lo for lo, _ in pads] if symmetric else [0, 0]
  x = x.contiguous(memory_format=torch.channels_last)
  w = torch.randn(conv['features'], c // conv['groups'], *conv['kernel'], generator=gen)
  w = w.contiguous(memory_format=torch.channels_last) * 0.05
  b = torch.zeros(conv['features']) if conv['bias'] else None
  args = dict(stride=list(conv['strides']), padding=padding, dilation=list(conv['dilation']),
              groups=conv['groups'])
  with torch.no_grad():
    y = torch.nn.functional.conv2d(x, w, b, **args)
  g = torch.randn(y.shape, generator=gen).contiguous(memory_format=torch.channels_last)
  mask = [not conv['on_image'], True, conv['bias']]

  def forward():
    with torch.no_grad():
      torch.nn.functional.conv2d(x, w, b, **args)

  def backward():
    torch.ops.aten.convolution_backward(
      g, x, w, [conv['features']] if conv['bias'] else None, args['stride'], args['padding'],
      args['dilation'], False, [0, 0], args['groups'], mask)

  return {'forward': forward, 'backward': backward}


def _totals(rows: list[dict], side: str) -> dict:
  """Seconds per step of one side's convolutions, weighted by call counts, by kernel class."""
  out = {}
  for cls in ('1x1', 'kxk', 'all'):
    sel = [r for r in rows if r.get(side) and (cls == 'all' or r['class'] == cls)]
    fwd = sum(r[side]['forward_ms'] * r['count'] for r in sel) / 1e3
    bwd = sum(r[side]['backward_ms'] * r['count'] for r in sel) / 1e3
    out[cls] = {'forward_s': fwd, 'backward_s': bwd, 'total_s': fwd + bwd}
  return out


def run(args) -> dict:
  torch = None
  if not args.no_torch:
    try:
      import torch
    except ImportError:
      torch = None
  model = create_model(args.model, num_classes=args.num_classes, conv_impl=args.conv_impl)
  image_shape = (args.batch, args.image_size, args.image_size, 3)
  rows, sides = [], []
  for conv in collect_convolutions(model, image_shape):
    output, ours = prepare_ours(conv)
    row = {k: v for k, v in conv.items() if k not in ('module', 'layers')}
    row.update(layers=conv['layers'][:3], output=output,
               gflop_forward=forward_gflop(conv, output),
               **{'class': '1x1' if math.prod(conv['kernel']) == 1 else 'kxk'})
    rows.append(row)
    sides.append({'jax': ours, **({'torch': prepare_torch(conv, torch)} if torch else {})})
  # Rounds over every shape, each side right after the other: a noisy minute hits both alike.
  times = [{side: {p: [] for p in fns} for side, fns in s.items()} for s in sides]
  for _ in range(args.repeat):
    for fns_by_side, t in zip(sides, times):
      for side, fns in fns_by_side.items():
        for p, fn in fns.items():
          t[side][p].append(_median_ms(fn, args.steps, args.warmup))
  for row, t in zip(rows, times):
    for side, passes in t.items():
      if passes:
        row[side] = {f'{p}_ms': statistics.median(v) for p, v in passes.items()}
    if row.get('torch'):
      row['ratio_forward'] = row['jax']['forward_ms'] / row['torch']['forward_ms']
      row['ratio_backward'] = row['jax']['backward_ms'] / row['torch']['backward_ms']
  result = {
    'model': args.model, 'batch': args.batch, 'image_size': args.image_size,
    'conv_impl': args.conv_impl, 'jax': jax.__version__, 'backend': jax.default_backend(),
    'repeats': args.repeat, 'distinct_convolutions': len(rows),
    'calls': sum(r['count'] for r in rows), 'jax_totals': _totals(rows, 'jax'),
  }
  if torch is not None:
    result.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                  torch_totals=_totals(rows, 'torch'))
    result['ratio_of_totals'] = {
      cls: result['jax_totals'][cls]['total_s'] / result['torch_totals'][cls]['total_s']
      for cls in result['jax_totals'] if result['torch_totals'][cls]['total_s'] > 0}
  result['convolutions'] = rows
  return result
