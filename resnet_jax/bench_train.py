"""Train- and eval-step benchmarks on random data: `python -m resnet_jax.bench train|eval`.

The timed step is the trainer's own (`steps.create_train_step`: SGD Nesterov with coupled weight
decay, BatchNorm over the global batch, donated state), so what is measured is what runs.
Reports compile time, the median step time after warm-up, images/s, achieved GFLOP/s (XLA's
cost analysis of the compiled step / step time) against a matmul peak measured in the same
process, and the peak memory XLA plans for the step (summed over the devices it runs on).
`--variant` compares model fields in one process; `--xla-variant` compares XLA flag sets and
`--env-variant` environment settings, one child process per setting and round (XLA reads its
flags once, when the backend starts; glibc its tunables when the process starts).
"""

import ast
import functools
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax import bench, compilation_cache, optim, parallel, steps, xla_flags
from resnet_jax.models import create_model

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def add_step_arguments(parser) -> None:
  """What defines the timed step: model, batch, image size, dtype, devices, step counts."""
  parser.add_argument('--model', default='resnet50', help='a name from list_models()')
  parser.add_argument('--batch', type=int, default=16, help='global batch size')
  parser.add_argument('--image-size', type=int, default=224)
  parser.add_argument('--num-classes', type=int, default=1000)
  parser.add_argument('--dtype', default='float32', choices=sorted(DTYPES),
                      help='compute dtype (params stay float32)')
  parser.add_argument('--conv-impl', default='auto', help='auto | xla | matmul | cpu')
  parser.add_argument('--steps', type=int, default=5, help='timed steps (median reported)')
  parser.add_argument('--warmup', type=int, default=2, help='untimed steps after compiling')
  parser.add_argument('--cpu-devices', type=int, default=0,
                      help='virtual CPU devices (0 = auto, as training: one per core dividing '
                           'the batch, one for >= 33 blocks on >= 128 px images on <= 2 '
                           'cores; 1 = off); ignored when XLA_FLAGS sets the device count')


def add_arguments(parser) -> None:
  add_step_arguments(parser)
  parser.add_argument('--repeat', type=int, default=1,
                      help='whole measurements (fresh compile each); medians of all reported')
  parser.add_argument('--compilation-cache', default='',
                      help='persistent compilation cache directory (run twice: the second '
                           'compile_s is a warm start); default off, so compile_s is cold')
  parser.add_argument('--variant', action='append', default=[], metavar='NAME:FIELD=V,…',
                      help='compare model variants in one run, interleaved, e.g. '
                           '--variant xla:conv_impl=xla --variant mm:conv_impl=matmul')
  parser.add_argument('--xla-variant', action='append', default=[], metavar='NAME=FLAGS',
                      help='compare XLA flag sets, each in a fresh process (flags are read when '
                           'the backend starts), interleaved over --repeat rounds, e.g. '
                           '--xla-variant ynn=--xla_cpu_experimental_ynn_fusion_type='
                           '+individual_convolution --xla-variant default=')
  parser.add_argument('--env-variant', action='append', default=[], metavar='NAME:VAR=VALUE',
                      help='compare environment settings the same way, e.g. the malloc '
                           'tunables of host_malloc.py against glibc\'s defaults: '
                           '--env-variant system:GLIBC_TUNABLES=glibc.malloc.hugetlb=0 '
                           '--env-variant tuned:')


def parse_variant(text: str) -> tuple[str, dict]:
  """'mm:conv_impl=matmul,remat=True' -> ('mm', {'conv_impl': 'matmul', 'remat': True})."""
  name, _, body = text.partition(':')
  fields = {}
  for item in filter(None, body.split(',')):
    key, sep, value = item.partition('=')
    if not sep:
      raise ValueError(f'--variant {text!r}: expected NAME:FIELD=VALUE[,FIELD=VALUE]')
    try:
      fields[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      fields[key] = value  # a bare word such as matmul
  return name, fields


def matmul_peak_gflops(n: int = 2048, reps: int = 5) -> float:
  """fp32 matmul GFLOP/s on the default device: the roofline the step is compared against."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  f(a, a).block_until_ready()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    f(a, a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n**3 / statistics.median(times) / 1e9


# XLA's cost and memory analyses describe one device's program of an SPMD executable; the totals
# below multiply by the devices it runs on (on CPU they all share the host's cores and RAM).


def _flops(compiled, num_devices: int) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get('flops', 0.0)) * num_devices


def _peak_memory(compiled, num_devices: int) -> int:
  m = compiled.memory_analysis()
  if m is None:
    return 0
  # Arguments and outputs alias through donation; temporaries are the activations and buffers.
  return num_devices * int(m.argument_size_in_bytes + m.output_size_in_bytes
                           - m.alias_size_in_bytes + m.temp_size_in_bytes)


def _optim_config() -> ml_collections.ConfigDict:
  # The ImageNet recipe's optimiser (configs/imagenet_common.py): what a real run compiles.
  return ml_collections.ConfigDict(dict(
    momentum=0.9, nesterov=True, weight_decay=1e-4, weight_decay_mode='coupled',
    weight_decay_exclude=('bias', 'scale'),
  ))


def _model(args, **variant_fields):
  fields = {'num_classes': args.num_classes, 'dtype': DTYPES[args.dtype],
            'conv_impl': args.conv_impl, **variant_fields}
  if isinstance(fields['dtype'], str):  # A variant's dtype=bfloat16.
    if fields['dtype'] not in DTYPES:
      raise ValueError(f"--variant dtype={fields['dtype']!r}: expected one of {sorted(DTYPES)}")
    fields['dtype'] = DTYPES[fields['dtype']]
  return create_model(args.model, **fields)


def _random_batch(args, mesh, with_mask=False):
  rng = np.random.default_rng(0)
  batch = {
    'image': rng.standard_normal((args.batch, args.image_size, args.image_size, 3), np.float32),
    'label': rng.integers(0, args.num_classes, args.batch).astype(np.int32),
  }
  if with_mask:
    batch['mask'] = np.ones(args.batch, bool)
  return parallel.global_batch(mesh, batch)


def _time_steps(run, n: int) -> list[float]:
  times = []
  for _ in range(n):
    t = time.perf_counter()
    jax.block_until_ready(run())
    times.append(time.perf_counter() - t)
  return times


def compile_train(args, **model_fields):
  """The trainer's step for `args` compiled on all devices, with a closure that runs it.

  Returns (compiled, run, mesh, timings): run() takes one step on a fixed random batch,
  carrying the state, and returns the metrics; timings has 'init_s' and 'compile_s'.
  """
  mesh = parallel.create_mesh()
  model = _model(args, **model_fields)
  tx = optim.create_optimizer(_optim_config(), lambda step: 0.1)
  t0 = time.perf_counter()
  state = steps.create_train_state(model, tx, jax.random.key(0),
                                   (args.image_size, args.image_size, 3), mesh)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  batch = _random_batch(args, mesh)
  metrics = jax.device_put(steps.zero_train_metrics(), parallel.replicated(mesh))
  step = steps.create_train_step(model, tx, mesh)
  t0 = time.perf_counter()
  compiled = step.lower(state, metrics, batch).compile()
  compile_s = time.perf_counter() - t0
  holder = {'state': state, 'metrics': metrics}

  def run():
    holder['state'], holder['metrics'] = compiled(holder['state'], holder['metrics'], batch)
    return holder['metrics']

  return compiled, run, mesh, {'init_s': init_s, 'compile_s': compile_s}


def measure_train(args, **model_fields) -> dict:
  """One fresh compile and timing of the train step."""
  compiled, run, mesh, timings = compile_train(args, **model_fields)
  _time_steps(run, args.warmup)
  step_s = statistics.median(_time_steps(run, args.steps))
  flops = _flops(compiled, mesh.size)
  return {
    **timings, 'step_s': step_s,
    'images_per_sec': args.batch / step_s, 'gflops_per_sec': flops / step_s / 1e9,
    'step_gflops': flops / 1e9, 'peak_memory_bytes': _peak_memory(compiled, mesh.size),
  }


def measure_eval(args) -> dict:
  """Compile time, throughput at --batch and batch-1 latency of the eval forward pass."""
  mesh = parallel.create_mesh()
  model = _model(args)
  x = jnp.zeros((1, args.image_size, args.image_size, 3))
  variables = jax.jit(lambda: model.init(jax.random.key(0), x, train=False))()
  variables = jax.device_put(variables, parallel.replicated(mesh))
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  out = {}
  for name, batch_size in (('batch', args.batch), ('latency', 1)):
    images = jnp.zeros((batch_size, args.image_size, args.image_size, 3))
    # Throughput: the batch split over every device, as evaluation runs. Latency: one device.
    devices = mesh.size if name == 'batch' and batch_size % mesh.size == 0 else 1
    if devices > 1:
      images = jax.device_put(images, parallel.data_sharding(mesh))
    else:
      variables = jax.device_put(variables, jax.devices()[0])
    t0 = time.perf_counter()
    compiled = forward.lower(variables, images).compile()
    compile_s = time.perf_counter() - t0
    run = functools.partial(compiled, variables, images)
    _time_steps(run, args.warmup)
    step_s = statistics.median(_time_steps(run, args.steps))
    if name == 'batch':
      out.update(compile_s=compile_s, step_s=step_s, images_per_sec=batch_size / step_s,
                 gflops_per_sec=_flops(compiled, devices) / step_s / 1e9,
                 peak_memory_bytes=_peak_memory(compiled, devices))
    else:
      out['latency_batch1_s'] = step_s
  del mesh
  return out


def _median_of(runs: list[dict]) -> dict:
  return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def _header(args) -> dict:
  return {
    'model': args.model, 'batch': args.batch, 'image_size': args.image_size,
    'dtype': args.dtype, 'conv_impl': args.conv_impl, 'backend': jax.default_backend(),
    'devices': jax.device_count(), 'jax': jax.__version__, 'repeats': getattr(args, 'repeat', 1),
    'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''),  # malloc's (host_malloc.py)
  }


def _child_argv(args) -> list[str]:
  """This measurement's bench arguments for one round in a child process (no process variants)."""
  argv = ['train', '--model', args.model,
          '--batch', str(args.batch), '--image-size', str(args.image_size),
          '--num-classes', str(args.num_classes), '--dtype', args.dtype,
          '--conv-impl', args.conv_impl, '--steps', str(args.steps),
          '--warmup', str(args.warmup), '--cpu-devices', str(args.cpu_devices)]
  return argv


def _process_variants(args) -> tuple[str, list[tuple[str, str, dict]]]:
  """(kind, [(name, setting, child environment)]) from --xla-variant or --env-variant."""
  if args.variant:
    raise ValueError('--xla-variant/--env-variant and --variant cannot be combined: compare '
                     'one kind at a time')
  if args.xla_variant and args.env_variant:
    raise ValueError('--xla-variant and --env-variant cannot be combined: compare one kind at '
                     'a time')
  user_flags = getattr(args, 'user_xla_flags', '')
  variants = []
  for text in args.xla_variant:
    name, sep, flags = text.partition('=')
    if not sep or not name:
      raise ValueError(f'--xla-variant {text!r}: expected NAME=FLAGS (FLAGS may be empty)')
    variants.append((name, flags, {'XLA_FLAGS': xla_flags.merge(user_flags, flags)}))
  for text in args.env_variant:
    name, sep, setting = text.partition(':')
    var, eq, value = setting.partition('=')
    if not sep or not name or (setting and (not eq or not var)):
      raise ValueError(f'--env-variant {text!r}: expected NAME:VAR=VALUE or NAME: (unchanged)')
    variants.append((name, setting, {var: value} if setting else {}))
  return ('xla' if args.xla_variant else 'env'), variants


def run_process_variants(args) -> dict:
  """Each variant in its own process per round; medians and ratios to the first."""
  kind, variants = _process_variants(args)
  runs = {name: [] for name, _, _ in variants}
  with tempfile.TemporaryDirectory() as tmp:
    for round_ in range(args.repeat):
      for name, _, env in variants:  # Interleaved: a noisy minute hits every variant alike.
        out = os.path.join(tmp, f'{name}_{round_}.json')
        runs[name].append(bench.run_child(_child_argv(args), env, out,
                                          f'--{kind}-variant {name} round {round_ + 1}'))
  keys = ('init_s', 'compile_s', 'step_s', 'images_per_sec', 'gflops_per_sec',
          'peak_memory_bytes', 'matmul_peak_gflops')
  medians = {name: {k: statistics.median(r[k] for r in rs) for k in keys}
             for name, rs in runs.items()}
  base = variants[0][0]
  first = runs[base][0]  # The parent never starts a backend: the children's header.
  header = {k: first[k] for k in ('model', 'batch', 'image_size', 'dtype', 'conv_impl',
                                   'backend', 'devices', 'jax')}
  setting_key = {'xla': 'xla_flags', 'env': 'env'}[kind]
  return {
    **header, 'repeats': args.repeat,
    f'{kind}_variants': {name: {setting_key: setting, 'devices': runs[name][0]['devices'],
                                'glibc_tunables': runs[name][0]['glibc_tunables'],
                                **medians[name],
                                'rounds_images_per_sec': [r['images_per_sec'] for r in runs[name]]}
                         for name, setting, _ in variants},
    'speedup_vs_' + base: {name: m['images_per_sec'] / medians[base]['images_per_sec']
                           for name, m in medians.items()},
  }


def run(args) -> dict:
  """The `train` subcommand: one configuration, or several compared as ratios."""
  if args.xla_variant or args.env_variant:
    return run_process_variants(args)
  compilation_cache.enable(args.compilation_cache)
  peak = matmul_peak_gflops()
  variants = [parse_variant(v) for v in args.variant] or [('', {})]
  runs = {name: [] for name, _ in variants}
  for _ in range(args.repeat):
    # Interleaved, so that a noisy minute on a shared machine hits every variant alike.
    for name, fields in variants:
      runs[name].append(measure_train(args, **fields))
  medians = {name: _median_of(r) for name, r in runs.items()}
  for m in medians.values():
    m['fraction_of_matmul_peak'] = m['gflops_per_sec'] / peak
  result = {**_header(args), 'matmul_peak_gflops': peak}
  if len(variants) == 1:
    return {**result, **medians[variants[0][0]]}
  base = variants[0][0]
  result['variants'] = {name: {'fields': fields, **medians[name],
                               'rounds_images_per_sec': [r['images_per_sec'] for r in runs[name]]}
                        for name, fields in variants}
  result['speedup_vs_' + base] = {
    name: medians[name]['images_per_sec'] / medians[base]['images_per_sec'] for name in medians
  }
  return result


def run_eval(args) -> dict:
  """The `eval` subcommand."""
  runs = [measure_eval(args) for _ in range(args.repeat)]
  return {**_header(args), **_median_of(runs)}
