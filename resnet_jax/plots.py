"""Training curves: reads WORKDIR/metrics.jsonl (skipping bad lines) and draws runs into one PNG.

The one plotting implementation, used by `resnet_jax.report` and by `make demo` (main.py).
Figures are drawn on matplotlib's Agg canvas directly, without `matplotlib.use`, so importing this
module never changes the backend of a notebook or another program.
"""

import dataclasses
import json
import math
import os
import sys

METRICS_FILE = 'metrics.jsonl'
# One panel per quantity: (title, metric keys drawn on it, y label). Names as train.py logs them.
PANELS = (
  ('loss', ('train/loss', 'eval/loss'), 'cross-entropy'),
  ('top-1 accuracy', ('train/top1', 'eval/top1'), 'fraction correct'),
  ('learning rate', ('lr',), 'lr'),
  ('throughput', ('images_per_sec',), 'images / s'),
)


@dataclasses.dataclass
class Run:
  """One run's logged rows (each a dict with 'step'), in file order."""

  name: str  # Legend label: the workdir's name.
  path: str  # The metrics.jsonl file read.
  rows: list[dict]
  bad_lines: list[int]  # 1-based numbers of the lines that were skipped.

  def series(self, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the rows that logged `key`."""
    pairs = [(r['step'], r[key]) for r in self.rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pairs], [float(p[1]) for p in pairs]


def metrics_path(workdir: str) -> str:
  """WORKDIR/metrics.jsonl (or `workdir` itself when it is that file); raises if missing."""
  path = workdir if os.path.isfile(workdir) else os.path.join(workdir, METRICS_FILE)
  if not os.path.isfile(path):
    what = 'no such directory' if not os.path.isdir(workdir) else f'no {METRICS_FILE} in it'
    raise FileNotFoundError(
      f'{workdir!r}: {what}; expected a run directory (the --workdir of resnet_jax.main) '
      f'containing {METRICS_FILE}.')
  return path


def run_name(workdir: str) -> str:
  """The label of a run: its directory's name (the file's directory for a metrics.jsonl path)."""
  path = os.path.abspath(workdir)
  if os.path.isfile(path):
    path = os.path.dirname(path)
  return os.path.basename(path.rstrip(os.sep)) or path


def read_run(workdir: str, name: str | None = None, quiet: bool = False) -> Run:
  """The rows of WORKDIR/metrics.jsonl; lines that are not a JSON object with a numeric 'step'
  (a run killed mid-write, hand edits) are skipped with a warning naming file:line."""
  path = metrics_path(workdir)
  rows, bad = [], []
  with open(path, encoding='utf-8', errors='replace') as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        reason = None
        if not isinstance(row, dict):
          reason = f'a JSON {type(row).__name__}, not an object'
        elif not isinstance(row.get('step'), (int, float)) or isinstance(row['step'], bool):
          reason = "no numeric 'step'"
      except json.JSONDecodeError as e:
        reason = f'not JSON ({e.msg})'
      if reason:
        bad.append(number)
        if not quiet:
          print(f'warning: {path}:{number}: skipped, {reason}', file=sys.stderr)
        continue
      rows.append({k: v for k, v in row.items() if isinstance(v, (int, float))})
  if bad and not quiet:
    print(f'warning: {path}: skipped {len(bad)} bad line(s) of {number}', file=sys.stderr)
  return Run(name=name or run_name(workdir), path=path, rows=rows, bad_lines=bad)


def unique_names(workdirs: list[str]) -> list[str]:
  """Legend labels: directory names, widened to parent/name where two runs would share one."""
  names = [run_name(w) for w in workdirs]
  for i, w in enumerate(workdirs):
    if names.count(names[i]) > 1:
      names[i] = os.path.relpath(os.path.abspath(w)) if os.path.isdir(w) else w
  return names


def plot_runs(runs: list[Run], path: str) -> str:
  """Writes one PNG with a panel per quantity in PANELS and a colour per run; returns `path`."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(11, 7.5), layout='constrained')
  FigureCanvasAgg(fig)
  axes = fig.subplots(2, 2).ravel()
  colours = [f'C{i % 10}' for i in range(len(runs))]
  for ax, (title, keys, ylabel) in zip(axes, PANELS, strict=True):
    drawn = 0
    for run, colour in zip(runs, colours, strict=True):
      for key in keys:
        steps, values = run.series(key)
        if not steps:
          continue
        is_eval = key.startswith('eval')
        label = run.name if len(keys) == 1 else f'{run.name} {key.split("/")[0]}'
        # Eval is often logged only at the end: markers keep a single point visible.
        ax.plot(steps, values, color=colour, label=label, linestyle='--' if is_eval else '-',
                marker='o' if is_eval else None, markersize=4, linewidth=1.3)
        drawn += 1
    ax.set_title(title)
    ax.set_xlabel('step')
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if drawn:
      ax.legend(fontsize='small')
    else:
      ax.text(0.5, 0.5, 'not logged: ' + ', '.join(keys), ha='center', va='center',
              transform=ax.transAxes, color='gray')
  _loss_scale(axes[0], runs)
  fig.suptitle('Training curves: ' + ', '.join(r.name for r in runs), fontsize='medium')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  return path


def plot_metric(runs: list[Run], key: str, path: str, as_error: bool = False,
                smooth: int = 1) -> str:
  """One panel of `key` for every run (e.g. the degradation study's training error, He et al.
  2016 Fig. 6); `as_error` plots 100 * (1 - value) in %, `smooth` is a trailing moving average
  over that many logged points (1 = raw). Raises ValueError if no run logged `key`."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  if not any(run.series(key)[0] for run in runs):
    raise ValueError(f'no run logged {key!r}; logged keys: '
                     f'{sorted({k for r in runs for row in r.rows for k in row})}')
  fig = Figure(figsize=(7, 4.5), layout='constrained')
  FigureCanvasAgg(fig)
  ax = fig.subplots()
  for i, run in enumerate(runs):
    steps, values = run.series(key)
    if as_error:
      values = [100.0 * (1.0 - v) for v in values]
    window = max(1, smooth)
    values = [sum(values[max(0, j - window + 1):j + 1]) / len(values[max(0, j - window + 1):j + 1])
              for j in range(len(values))]
    ax.plot(steps, values, color=f'C{i % 10}', label=run.name, linewidth=1.4)
  ax.set_xlabel('step')
  ax.set_ylabel(f'{key} error (%)' if as_error else key)
  ax.set_title(f'{key}{" error" if as_error else ""}'
               + (f' (moving average of {smooth} points)' if smooth > 1 else ''))
  ax.grid(alpha=0.3)
  ax.legend(fontsize='small')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  return path


def _loss_scale(ax, runs: list[Run]) -> None:
  # Losses fall over orders of magnitude; on a linear axis the end of training is a flat line.
  values = [v for r in runs for k in PANELS[0][1] for v in r.series(k)[1]]
  finite = [v for v in values if math.isfinite(v)]
  if finite and min(finite) > 0 and max(finite) / min(finite) > 20:
    ax.set_yscale('log')


def plot_workdir(workdir: str, filename: str = 'curves.png') -> str:
  """Plots one run's curves to WORKDIR/<filename>; returns the PNG's path."""
  return plot_runs([read_run(workdir)], os.path.join(workdir, filename))
