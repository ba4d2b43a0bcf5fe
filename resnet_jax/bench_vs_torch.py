"""Our train step against torchvision's on this machine: `python -m resnet_jax.bench vs-torch`.

Absolute images/s move 1.5-2x between two hosts of the same size (and between two hours of one
shared host), so the speed that means something is the ratio to PyTorch's measured in the same
run. Each round runs `bench train` (as training runs: default devices, host_malloc's tunables)
and `bench torch`, each in its own process, one after the other, so a noisy minute hits both
alike; the result is the medians and the ratio per round and of the medians.

torch runs twice per round: with glibc's malloc defaults, as a PyTorch user runs it, and with
host_malloc's tunables, so that what the tunables buy torch is not counted as ours.
"""

import os
import statistics
import sys
import tempfile

from resnet_jax import bench
from resnet_jax.bench_train import DTYPES
from resnet_jax.models.layers import CONV_IMPLS

# glibc's defaults, stated so that the child's host_malloc re-exec leaves them (its opt-out).
GLIBC_DEFAULTS = 'glibc.malloc.hugetlb=0'
# torch's faster layout for each model here (bench torch, both layouts, 2026-11-22 and 12-06):
# channels_last for bottleneck networks, NCHW for ResNet-18/34.
CONTIGUOUS_FASTER = ('resnet18', 'resnet34')


def add_arguments(parser) -> None:
  parser.add_argument('--model', default='resnet50', help='a name both zoos have, e.g. resnet50')
  parser.add_argument('--batch', type=int, default=16, help='global batch size')
  parser.add_argument('--image-size', type=int, default=224)
  parser.add_argument('--num-classes', type=int, default=1000)
  parser.add_argument('--dtype', default='float32', choices=sorted(DTYPES),
                      help='compute dtype of both sides: bfloat16 is our half_precision and '
                           "torch's autocast (parameters float32 on both)")
  parser.add_argument('--steps', type=int, default=5, help='timed steps per run (median)')
  parser.add_argument('--warmup', type=int, default=2, help='untimed steps first')
  parser.add_argument('--repeat', type=int, default=2, help='rounds (each runs every side once)')
  parser.add_argument('--conv-impl', action='append', default=[], choices=CONV_IMPLS,
                      help="our lowering (layers.CONV_IMPLS; default auto); repeat to time "
                           "several, e.g. --conv-impl cpu --conv-impl onednn")
  parser.add_argument('--memory-format', default='auto',
                      choices=('auto', 'channels_last', 'contiguous'),
                      help="torch's layout; auto = its faster one here (NCHW for ResNet-18/34)")


def memory_format(args) -> str:
  if args.memory_format != 'auto':
    return args.memory_format
  return 'contiguous' if args.model in CONTIGUOUS_FASTER else 'channels_last'


def jax_sides(args) -> dict[str, str]:
  """Our sides' names -> lowering: {'jax': impl}, or 'jax_<impl>' for each of several."""
  impls = args.conv_impl or ['auto']
  return {'jax': impls[0]} if len(impls) == 1 else {f'jax_{impl}': impl for impl in impls}


def sides(args) -> dict[str, tuple[list[str], dict]]:
  """name -> (bench arguments, environment overrides) of each process of a round."""
  common = ['--model', args.model, '--batch', str(args.batch), '--image-size',
            str(args.image_size), '--num-classes', str(args.num_classes), '--steps',
            str(args.steps), '--warmup', str(args.warmup), '--dtype', args.dtype]
  torch = ['torch', *common, '--memory-format', memory_format(args)]
  # Our children re-execute themselves with the tunables.
  ours = {name: (['train', *common, '--conv-impl', impl], {})
          for name, impl in jax_sides(args).items()}
  return {
    **ours,
    'torch': (torch, {'GLIBC_TUNABLES': GLIBC_DEFAULTS}),
    'torch_tuned': (torch, {}),
  }


def run(args) -> dict:
  runs = {name: [] for name in sides(args)}
  with tempfile.TemporaryDirectory() as tmp:
    for round_ in range(args.repeat):
      for name, (bench_args, env) in sides(args).items():
        out = os.path.join(tmp, f'{name}_{round_}.json')
        runs[name].append(bench.run_child(bench_args, env, out,
                                          f'vs-torch: {name} round {round_ + 1}'))
        print(f'vs-torch round {round_ + 1}/{args.repeat} {name}: '
              f'{runs[name][-1]["images_per_sec"]:.3g} img/s', file=sys.stderr, flush=True)

  def summary(rs: list[dict], keys: tuple[str, ...]) -> dict:
    return {'images_per_sec': statistics.median(r['images_per_sec'] for r in rs),
            'rounds_images_per_sec': [r['images_per_sec'] for r in rs],
            **{k: rs[0][k] for k in keys}}

  jax_keys = ('devices', 'jax', 'glibc_tunables', 'conv_impl', 'dtype')
  torch_keys = ('torch', 'threads', 'memory_format', 'glibc_tunables', 'dtype', 'logits_dtype')
  result = {'model': args.model, 'batch': args.batch, 'image_size': args.image_size,
            'dtype': args.dtype, 'repeats': args.repeat}
  for side in jax_sides(args):
    result[side] = {**summary(runs[side], jax_keys),
                    'compile_s': statistics.median(r['compile_s'] for r in runs[side]),
                    'peak_memory_bytes': runs[side][0]['peak_memory_bytes'],
                    'rounds_matmul_peak_gflops': [r['matmul_peak_gflops'] for r in runs[side]]}
  for name in ('torch', 'torch_tuned'):
    result[name] = summary(runs[name], torch_keys)
    for side in jax_sides(args):
      suffix = '' if side == 'jax' else f'_{side}'  # ratio_per_round, or ..._jax_onednn
      result[name][f'ratio_per_round{suffix}'] = [
        j['images_per_sec'] / t['images_per_sec'] for j, t in zip(runs[side], runs[name])]
      result[name][f'ratio_of_medians{suffix}'] = (result[side]['images_per_sec']
                                                   / result[name]['images_per_sec'])
  return result
