"""Benchmarks: `python -m resnet_jax.bench SUBCOMMAND [--json FILE]`.

Add a subcommand by adding an entry to SUBCOMMANDS: name -> (module, help); the module provides
`add_arguments(parser)` and `run(args) -> dict`, whose result is printed and written to --json.
"""

import argparse
import importlib
import json
import os
import subprocess
import sys

SUBCOMMANDS = {
  'input': ('resnet_jax.data.bench_input', 'input-pipeline throughput (images/s per core)'),
  'train': ('resnet_jax.bench_train', 'train-step speed, compile time, memory (random data)'),
  'eval': ('resnet_jax.bench_eval', 'eval forward throughput and batch-1 latency'),
  'torch': ('resnet_jax.bench_torch', "torchvision's train step on this machine (reference)"),
  'vs-torch': ('resnet_jax.bench_vs_torch', "ours against torchvision's, alternated: ratios"),
  'profile': ('resnet_jax.bench_profile', "the train step's time by op category, pass, stage"),
  'convs': ('resnet_jax.bench_convs', "each of a model's convolutions alone, ours and torch's"),
}


def run_child(bench_args: list[str], env: dict, out: str, label: str) -> dict:
  """`python -m resnet_jax.bench *bench_args --json out` in a fresh process with `env` added
  to this one's environment; its JSON result. A failure names `label` and shows its stderr."""
  proc = subprocess.run([sys.executable, '-m', 'resnet_jax.bench', *bench_args, '--json', out],
                        env={**os.environ, **env}, capture_output=True, text=True)
  if proc.returncode != 0:
    raise RuntimeError(f'{label} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}')
  with open(out) as f:
    return json.load(f)


def main(argv: list[str] | None = None) -> dict:
  """Parses the subcommand, runs it, prints and optionally writes its JSON result."""
  parser = argparse.ArgumentParser(prog='python -m resnet_jax.bench', description=__doc__)
  sub = parser.add_subparsers(dest='command', required=True)
  for name, (module_name, help_text) in SUBCOMMANDS.items():
    p = sub.add_parser(name, help=help_text)
    p.add_argument('--json', default='', help='write the results to this JSON file')
    p.set_defaults(module_name=module_name)
    # Imported lazily so that one subcommand's heavy imports do not slow the others.
    importlib.import_module(module_name).add_arguments(p)
  args = parser.parse_args(argv)
  # What training runs with (before any subcommand starts the XLA backend).
  from resnet_jax import xla_flags
  args.user_xla_flags = os.environ.get('XLA_FLAGS', '')  # before the defaults: for child runs
  cpu_devices = getattr(args, 'cpu_devices', 1)
  if cpu_devices == 0:
    from resnet_jax.models import residual_blocks
    cpu_devices = xla_flags.auto_cpu_devices(args.batch, blocks=residual_blocks(args.model),
                                             image_size=args.image_size)
  xla_flags.apply_defaults(cpu_devices=cpu_devices)
  result = importlib.import_module(args.module_name).run(args)
  text = json.dumps(result, indent=2)
  print(text)
  if args.json:
    with open(args.json, 'w') as f:
      f.write(text + '\n')
    print(f'wrote {args.json}', file=sys.stderr)
  return result


if __name__ == '__main__':
  from resnet_jax import host_malloc
  host_malloc.reexec_with_tunables()  # What training runs with (host_malloc.py).
  main()
