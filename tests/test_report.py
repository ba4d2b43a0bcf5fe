"""report and plots: tables, PNGs, missing metrics, bad JSONL lines, missing metrics.jsonl."""

import json
import os

import pytest
from PIL import Image

from resnet_jax import plots, report


def write_run(workdir, rows, extra_lines=()):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    for row in rows:
      f.write(json.dumps(row) + '\n')
    for line in extra_lines:
      f.write(line)
  return str(workdir)


def train_rows(steps, loss0=2.0):
  return [{'step': s, 'train/loss': loss0 / s, 'train/top1': 1 - 1 / s, 'lr': 0.1,
           'images_per_sec': 1000.0 + s, 'epoch': s / 10} for s in steps]


def evaluated_run(tmp_path):
  rows = train_rows([10, 20, 30])
  rows.insert(2, {'step': 20, 'eval/loss': 0.5, 'eval/top1': 0.8, 'eval/top5': 0.95})
  rows.append({'step': 30, 'eval/loss': 0.6, 'eval/top1': 0.7, 'eval/top5': 0.97})
  return write_run(tmp_path / 'with_eval', rows)


def test_final_metrics_last_and_best(tmp_path):
  m = report.final_metrics(plots.read_run(evaluated_run(tmp_path)))
  assert m['steps'] == 30
  assert m['train/loss'] == pytest.approx(2 / 30) and m['train/top1'] == pytest.approx(1 - 1 / 30)
  assert (m['eval/top1'], m['best eval/top1'], m['best eval/top1 step']) == (0.7, 0.8, 20)
  assert (m['eval/top5'], m['best eval/top5'], m['best eval/top5 step']) == (0.97, 0.97, 30)
  assert m['wall_time'] is None


def test_report_compares_runs_and_skips_bad_lines(tmp_path, capsys):
  good = evaluated_run(tmp_path)
  # A run without evaluation, killed mid-write, with a stray non-object line.
  bad = write_run(tmp_path / 'no_eval', train_rows([10, 20]),
                  extra_lines=['[1, 2]\n', '\n', '{"step": 30, "train/lo'])
  out = tmp_path / 'out'
  assert report.main([good, bad, '--out', str(out)]) == 0
  captured = capsys.readouterr()
  assert f'{bad}/metrics.jsonl:3: skipped' in captured.err
  assert f'{bad}/metrics.jsonl:5: skipped' in captured.err
  assert 'skipped 2 bad line(s)' in captured.err
  table = captured.out
  assert '| with_eval | 30 | 0.0667 | 0.9667 | 0.7000 | 0.8000 @20 | 0.9700 | 0.9700 @30 |' in table
  assert '| no_eval | 20 | 0.1000 | 0.9500 | — | — | — | — |' in table
  assert 'wall time' not in table  # Not logged by any run: no column of dashes.
  md = (out / 'report.md').read_text()
  assert table.splitlines()[0] in md and '2 bad line(s) skipped' in md
  with Image.open(out / 'report.png') as png:
    assert png.format == 'PNG' and png.width > 800


def test_report_defaults_to_first_workdir_and_says_so(tmp_path, capsys):
  run = evaluated_run(tmp_path)
  assert report.main([run]) == 0
  assert f'Writing to {run} (the first WORKDIR' in capsys.readouterr().out
  assert os.path.isfile(os.path.join(run, 'report.png'))


def test_wall_time_column_when_logged(tmp_path):
  rows = train_rows([10]) + [{'step': 10, 'wall_time': 125.0}]
  table = report.markdown_table([plots.read_run(write_run(tmp_path / 'timed', rows))])
  assert table.splitlines()[0].endswith('| wall time |') and '| 2m05s |' in table


def test_workdir_without_metrics_is_a_clear_error(tmp_path, capsys):
  good = evaluated_run(tmp_path)
  empty = tmp_path / 'empty'
  empty.mkdir()
  assert report.main([good, str(empty)]) == 2
  err = capsys.readouterr().err
  assert str(empty) in err and 'no metrics.jsonl in it' in err
  assert not os.path.exists(os.path.join(good, 'report.png'))  # Failed before drawing.
  with pytest.raises(FileNotFoundError, match='no such directory'):
    plots.read_run(str(tmp_path / 'nope'))


def test_same_directory_names_get_distinct_labels(tmp_path):
  a = write_run(tmp_path / 'a' / 'run', train_rows([10]))
  b = write_run(tmp_path / 'b' / 'run', train_rows([10]))
  names = plots.unique_names([a, b])
  assert names[0] != names[1] and all(n.endswith('run') for n in names)


def test_summarize_run_writes_curves_and_prints_paths(tmp_path, capsys):
  run = evaluated_run(tmp_path)
  os.makedirs(os.path.join(run, 'tensorboard'))
  png = report.summarize_run(run)
  out = capsys.readouterr().out
  assert png == os.path.join(run, 'curves.png') and os.path.isfile(png)
  for path in (os.path.join(run, 'metrics.jsonl'), os.path.join(run, 'tensorboard'), png):
    assert path in out
  assert 'checkpoints:' not in out  # Only outputs that exist are listed.


def test_metric_figure_of_training_error(tmp_path, capsys):
  a, b = str(tmp_path / 'plain56'), str(tmp_path / 'resnet56')
  write_run(a, train_rows(range(1, 11)))
  write_run(b, train_rows(range(1, 11), loss0=1.0))
  assert report.main([a, b, '--out', str(tmp_path), '--metric', 'train/top1', '--error',
                      '--smooth', '3']) == 0
  png = tmp_path / 'train_top1_error.png'
  assert f'Figure: {png}' in capsys.readouterr().out
  assert Image.open(png).size[0] > 500
  runs = [plots.read_run(a), plots.read_run(b)]
  with pytest.raises(ValueError, match="no run logged 'train/top5'"):
    plots.plot_metric(runs, 'train/top5', str(tmp_path / 'x.png'))
  assert report.main([a, '--metric', 'nope']) == 2
  assert "error: --metric: no run logged 'nope'" in capsys.readouterr().err
