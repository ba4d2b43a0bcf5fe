"""Compare runs: python -m resnet_jax.report WORKDIR [WORKDIR ...] [--out DIR].

Writes DIR/report.png (loss, top-1, LR and images/s against step, one colour per run) and
DIR/report.md (a markdown table of final metrics, also printed). DIR defaults to the first
workdir. `summarize_run` is the end-of-training hook of `make demo`.
"""

import argparse
import math
import os
import sys

from resnet_jax import plots

MISSING = '—'  # Cell of a metric the run never logged (e.g. a run without evaluation).
COLUMNS = ('run', 'steps', 'train/loss', 'train/top1', 'eval/top1', 'best eval/top1',
           'eval/top5', 'best eval/top5', 'wall time')


def final_metrics(run: plots.Run) -> dict[str, float | int | None]:
  """Last logged value of each metric, best eval top-1/top-5 (with their step), steps, wall time.

  Wall time is read from a 'wall_time' key (seconds) when the trainer logged one; None otherwise.
  """
  def last(key):
    _, values = run.series(key)
    return values[-1] if values else None

  def best(key):
    steps, values = run.series(key)
    finite = [(v, s) for s, v in zip(steps, values, strict=True) if math.isfinite(v)]
    return max(finite) if finite else (None, None)

  out = {key: last(key) for key in ('train/loss', 'train/top1', 'eval/top1', 'eval/top5',
                                    'wall_time')}
  out['best eval/top1'], out['best eval/top1 step'] = best('eval/top1')
  out['best eval/top5'], out['best eval/top5 step'] = best('eval/top5')
  out['steps'] = max((int(r['step']) for r in run.rows), default=None)
  return out


def _cell(value, digits: int = 4) -> str:
  if value is None:
    return MISSING
  if isinstance(value, int):
    return f'{value:,}'
  return f'{value:.{digits}f}'


def _duration(seconds: float | None) -> str:
  if seconds is None:
    return MISSING
  minutes, secs = divmod(round(seconds), 60)
  return f'{minutes}m{secs:02d}s' if minutes else f'{seconds:.1f}s'


def _with_step(m: dict, key: str) -> str:
  step = m[f'{key} step']
  return _cell(m[key]) + (f' @{step:,}' if step is not None else '')


def markdown_table(runs: list[plots.Run]) -> str:
  """One row per run with the COLUMNS; metrics a run did not log show as MISSING."""
  finals = [final_metrics(run) for run in runs]
  # train.py does not log wall time (yet): a column of dashes would only be noise.
  timed = any(m['wall_time'] is not None for m in finals)
  columns = COLUMNS if timed else COLUMNS[:-1]
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  for run, m in zip(runs, finals, strict=True):
    cells = [run.name, _cell(m['steps']), _cell(m['train/loss']), _cell(m['train/top1']),
             _cell(m['eval/top1']), _with_step(m, 'best eval/top1'), _cell(m['eval/top5']),
             _with_step(m, 'best eval/top5'), _duration(m['wall_time'])]
    lines.append('| ' + ' | '.join(cells[:len(columns)]) + ' |')
  return '\n'.join(lines) + '\n'


def write_report(workdirs: list[str], out_dir: str) -> tuple[str, str, str]:
  """Reads every run, writes report.png and report.md to `out_dir`; (png, md, table)."""
  names = plots.unique_names(workdirs)
  runs = [plots.read_run(w, name) for w, name in zip(workdirs, names, strict=True)]
  os.makedirs(out_dir, exist_ok=True)
  png = plots.plot_runs(runs, os.path.join(out_dir, 'report.png'))
  table = markdown_table(runs)
  skipped = [f'{r.path}: {len(r.bad_lines)} bad line(s) skipped' for r in runs if r.bad_lines]
  md = os.path.join(out_dir, 'report.md')
  with open(md, 'w') as f:
    f.write('# Runs\n\n' + table + '\n![curves](report.png)\n')
    if skipped:
      f.write('\nSkipped input:\n' + ''.join(f'- {s}\n' for s in skipped))
  return png, md, table


def summarize_run(workdir: str) -> str:
  """After training: plots WORKDIR/curves.png and prints where every output of the run is."""
  png = plots.plot_workdir(workdir)
  run = plots.read_run(workdir, quiet=True)  # plot_workdir already warned about bad lines.
  outputs = [('metrics', run.path), ('TensorBoard', os.path.join(workdir, 'tensorboard')),
             ('curves', png), ('checkpoints', os.path.join(workdir, 'checkpoints')),
             ('config', os.path.join(workdir, 'config.json'))]
  print('\n' + markdown_table([run]), end='')
  for label, path in outputs:
    if os.path.exists(path):
      print(f'{label + ":":13s}{path}')
  print(f'Compare runs: python -m resnet_jax.report {workdir} [OTHER_WORKDIR ...]')
  return png


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m resnet_jax.report',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('workdirs', nargs='+', metavar='WORKDIR',
                      help='run directories (each with metrics.jsonl), or metrics.jsonl files')
  parser.add_argument('--out', default=None,
                      help='directory for report.png and report.md (default: the first WORKDIR)')
  parser.add_argument('--metric', default='',
                      help="also draw one figure of this logged key for every run, e.g. "
                           "train/top1 (written to OUT/<key>.png)")
  parser.add_argument('--error', action='store_true',
                      help='--metric as an error in %%: 100 * (1 - value)')
  parser.add_argument('--smooth', type=int, default=1,
                      help='--metric: moving average over this many logged points')
  args = parser.parse_args(argv)
  try:
    for w in args.workdirs:  # Fail on a bad argument before drawing anything.
      plots.metrics_path(w)
  except FileNotFoundError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  out = args.out
  if out is None:
    first = args.workdirs[0]
    out = (os.path.dirname(first) or '.') if os.path.isfile(first) else first
    print(f'Writing to {out} (the first WORKDIR; choose with --out DIR)')
  png, md, table = write_report(args.workdirs, out)
  print(table, end='')
  print(f'Plots: {png}\nTable: {md}')
  if args.metric:
    runs = [plots.read_run(w, n, quiet=True)
            for w, n in zip(args.workdirs, plots.unique_names(args.workdirs), strict=True)]
    path = os.path.join(out, args.metric.replace('/', '_') + ('_error' if args.error else '')
                        + '.png')
    try:
      print(f'Figure: {plots.plot_metric(runs, args.metric, path, args.error, args.smooth)}')
    except ValueError as e:
      print(f'error: --metric: {e}', file=sys.stderr)
      return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
