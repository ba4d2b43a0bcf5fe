"""Where the train step's time goes: `python -m resnet_jax.bench profile`.

Compiles the trainer's step as `bench train` does, runs --warmup steps, then traces --steps
steps with `jax.profiler` and attributes every executed HLO instruction's self time to a
category (matmul, reduction, elementwise fusion, copy/transpose, collective, control flow,
convolution), a pass (forward, backward, update) and a model stage, lists the slowest ops, and
gives the share of the step each device spent inside traced ops. On CPU, convolutions run
outside their op events (see op_profile.py): their time is in the untraced core time. The trace
stays in --trace-dir for TensorBoard's profile plugin or Perfetto.
"""

import glob
import os
import tempfile
import time

import jax

from resnet_jax import bench_train, op_profile, xla_flags


def add_arguments(parser) -> None:
  bench_train.add_step_arguments(parser)
  parser.add_argument('--fields', default='', metavar='FIELD=V,…',
                      help='model fields for the profiled step, e.g. remat=True,store_every=0')
  parser.add_argument('--top', type=int, default=20, help='slowest ops listed')
  parser.add_argument('--trace-dir', default='',
                      help='keep the trace here (default: a temporary directory, removed)')


def _trace(run, steps: int, trace_dir: str) -> float:
  """Runs `steps` steps under the profiler; returns their wall time."""
  jax.profiler.start_trace(trace_dir)
  try:
    t0 = time.perf_counter()
    for _ in range(steps):
      out = run()
    jax.block_until_ready(out)
    return time.perf_counter() - t0
  finally:
    jax.profiler.stop_trace()


def _load(trace_dir: str):
  files = sorted(glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True),
                 key=os.path.getmtime)
  if not files:
    raise RuntimeError(f'jax.profiler wrote no .xplane.pb under {trace_dir}')
  return jax.profiler.ProfileData.from_file(files[-1])


def profile_step(args, trace_dir: str, **model_fields) -> dict:
  compiled, run, mesh, timings = bench_train.compile_train(args, **model_fields)
  bench_train._time_steps(run, max(1, args.warmup))  # The first run allocates; keep it out.
  wall_s = _trace(run, args.steps, trace_dir)
  hlo = compiled.as_text()
  module = hlo.split(None, 2)[1].rstrip(',')  # 'HloModule jit_train_step, ...'
  events = op_profile.events_from_profile(_load(trace_dir), module)
  if not events:
    raise RuntimeError(f'the trace in {trace_dir} has no events of HLO module {module!r}; '
                       'this backend may not record per-op events')
  summary = op_profile.summarize(events, op_profile.parse_hlo(hlo), args.steps, wall_s,
                                 cores=xla_flags.available_cores(), top=args.top)
  return {**timings, 'devices': mesh.size, **summary}


def run(args) -> dict:
  _, fields = bench_train.parse_variant(':' + args.fields)
  header = {k: v for k, v in bench_train._header(args).items() if k != 'repeats'}
  if args.trace_dir:
    result = profile_step(args, args.trace_dir, **fields)
  else:
    with tempfile.TemporaryDirectory() as tmp:
      result = profile_step(args, tmp, **fields)
  print(op_profile.format_summary(result))
  return {**header, 'fields': fields, 'profiled_steps': args.steps,
          'trace_dir': args.trace_dir or None, **result}
