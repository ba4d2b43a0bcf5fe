"""Evaluate runs and their ensemble: python -m resnet_jax.ensemble WORKDIR [WORKDIR ...] [--flip]
[--shift N].

Each run's newest checkpoint is evaluated on the eval split of the first run's data config
(every run must have trained on the same dataset and image size), then the ensemble: the mean
of the members' softmax probabilities. `--flip` adds horizontal-flip test-time augmentation to
every member (as config.eval_flip), `--shift N` the image's translations by N pixels (as
config.eval_shift). Prints a table, and writes it as JSON with `--json FILE`.
"""

import argparse
import json
import sys

import numpy as np


def _load_members(workdirs: list[str]):
  """[(name, model, variables)], and the data config every member shares (the first run's)."""
  import ml_collections

  from resnet_jax import predict
  from resnet_jax.data import sources
  from resnet_jax.train import create_model_from_config

  members, data_config = [], None
  for workdir in workdirs:
    config_path, step_dir = predict.resolve_run(workdir)
    with open(config_path) as f:
      config = ml_collections.ConfigDict(json.load(f))
    if data_config is None:
      data_config = config.data
    for field in ('name', 'eval_split', 'image_size'):
      if config.data[field] != data_config[field]:
        raise ValueError(f'{workdir}: data.{field}={config.data[field]!r} but the first run has '
                         f'{data_config[field]!r}; an ensemble needs the same eval data.')
    meta = sources.source_meta(config.data)
    config.half_precision = False
    model = create_model_from_config(config, meta.num_classes)
    shape = (config.data.image_size, config.data.image_size, meta.channels)
    members.append((workdir, model, predict.restore_variables(step_dir, model, shape)))
  return members, data_config


def evaluate(workdirs: list[str], flip: bool = False, shift: int = 0,
             batch_size: int = 500) -> dict:
  """{'members': {workdir: top1}, 'ensemble': top1, 'count': n} on the eval split."""
  import jax
  import tqdm

  from resnet_jax import data
  from resnet_jax.data import pipeline
  from resnet_jax.evaluation import predict_log_probs, shift_range

  members, data_config = _load_members(workdirs)
  shifts = shift_range(data_config.image_size)
  if shift not in shifts:
    raise ValueError(f'--shift {shift}: expected pixels in [0, {shifts.stop}) '
                     f'for {data_config.image_size}-pixel images, e.g. 1.')
  data_config.host_normalize = True  # Float batches: every member sees the same inputs.
  fill = pipeline.zero_pixel(data_config)
  forwards = [jax.jit(lambda v, x, m=model: predict_log_probs(m, v, x, flip, shift, fill))
              for _, model, _ in members]
  correct = np.zeros(len(members) + 1)
  count = 0
  batches = data.create_eval_iterator(data_config, split=data_config.eval_split,
                                      global_batch_size=batch_size, process_index=0,
                                      process_count=1)
  # Test-time views multiply the forward passes (10 with --flip --shift): show rate and ETA.
  bar = tqdm.tqdm(total=data.dataset_info(data_config).num_examples[data_config.eval_split],
                  unit='img', desc='eval', dynamic_ncols=True)
  for batch in batches:
    mask, labels = np.asarray(batch['mask'], bool), np.asarray(batch['label'])
    probs = [np.exp(np.asarray(f(v, batch['image'])))
             for f, (_, _, v) in zip(forwards, members, strict=True)]
    for i, p in enumerate([*probs, np.mean(probs, axis=0)]):
      correct[i] += np.sum((p.argmax(-1) == labels) & mask)
    count += int(mask.sum())
    bar.update(int(mask.sum()))
  bar.close()
  top1 = correct / max(count, 1)
  return {'members': dict(zip(workdirs, top1[:-1].tolist(), strict=True)),
          'ensemble': float(top1[-1]), 'count': count, 'flip': flip, 'shift': shift}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m resnet_jax.ensemble',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('workdirs', nargs='+', metavar='WORKDIR', help='runs of resnet_jax.main')
  parser.add_argument('--flip', action='store_true', help='horizontal-flip TTA for every member')
  parser.add_argument('--shift', type=int, default=0, metavar='N',
                      help='also average translations by N pixels (5 views, 10 with --flip)')
  parser.add_argument('--json', default='', help='also write the results to this file')
  args = parser.parse_args(argv)
  try:
    results = evaluate(args.workdirs, args.flip, args.shift)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  tta = ', '.join([f'{args.shift} px shifts'] * bool(args.shift) + ['flip'] * args.flip)
  print(f'eval top-1 on {results["count"]} examples{f" (TTA: {tta})" if tta else ""}:')
  for workdir, top1 in results['members'].items():
    print(f'  {top1:.4f}  {workdir}')
  print(f'  {results["ensemble"]:.4f}  ensemble of {len(args.workdirs)} (mean probabilities)')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
