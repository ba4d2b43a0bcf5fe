"""The training loop: train_and_evaluate builds the mesh, input, model, optimiser and state,
compiles the steps (steps.py, evaluation.py), resumes (warm_start.py), and runs with logging,
evaluation, checkpoints, preemption and non-finite handling.
"""

import contextlib
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from resnet_jax import checkpoint, data, metrics, optim, parallel, preemption, progressive
from resnet_jax.data import pipeline
from resnet_jax.evaluation import create_eval_step, eval_variable_sets, evaluate
from resnet_jax.steps import create_train_state, create_train_step, zero_train_metrics
from resnet_jax.warm_start import restore_or_init


def create_model_from_config(config: ml_collections.ConfigDict, num_classes: int):
  """The configured model; bf16 compute when config.half_precision (params stay fp32)."""
  from resnet_jax.models import create_model  # Imported late: models is a sibling package.
  # Fields at their "unset" value are not passed, so each model keeps its own default (GoogLeNet's
  # BN epsilon is 1e-3, Keras' momentum 0.99) and families without the option still build.
  unset = {'bn_momentum': -1.0, 'bn_epsilon': -1.0, 'conv_impl': 'auto', 'scan_blocks': False,
           'remat': False, 'remat_chain_stages': -1, 'store_every': -1}
  fields = {k: v for k, v in config.model.items() if k != 'name' and unset.get(k, None) != v}
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  _log_onednn(fields.get('conv_impl', 'auto'), dtype)
  return create_model(config.model.name, num_classes=num_classes, dtype=dtype, **fields)


def _log_onednn(conv_impl: str, dtype) -> None:
  """Says whether convolutions meant for oneDNN (conv_impl='onednn', or 'auto' in bfloat16 on
  CPU) run there, and if not why (they fall back)."""
  from resnet_jax.models import onednn_conv
  if jax.default_backend() != 'cpu':
    return
  bf16_auto = conv_impl == 'auto' and jnp.dtype(dtype) == jnp.bfloat16
  if conv_impl != 'onednn' and not bf16_auto:
    return
  name = 'conv_impl=onednn' if conv_impl == 'onednn' else 'conv_impl=auto in bfloat16'
  ok, why = onednn_conv.availability(dtype)
  if ok:
    logging.info('%s: convolutions on oneDNN (%s).', name, why)
  elif conv_impl == 'onednn':
    logging.warning('%s: %s; the convolutions run on conv_impl=cpu instead.', name, why)
  else:
    logging.warning("%s: %s; the convolutions run on XLA's, which have no bfloat16 kernels on "
                    "CPU (about float32's speed).", name, why)


def _check_finite(values: dict[str, float], first_step: int, last_step: int) -> None:
  for key in ('train/loss', 'train/grad_norm'):
    if not np.isfinite(values[key]):
      raise FloatingPointError(
          f'{key} is {values[key]} somewhere in steps {first_step}..{last_step}; the last '
          'checkpoint before these steps is intact. Fix: lower --config.optim.base_lr, add '
          'warm-up (optim.warmup_epochs), check the input data, or set '
          "--config.nonfinite_policy=skip to skip such steps.")


def _check_skips(fetched: dict, max_skips: int, first_step: int, last_step: int) -> None:
  if fetched['max_skip_run'] >= max_skips:
    raise FloatingPointError(
        f'{int(fetched["max_skip_run"])} steps in a row had a non-finite loss or gradient norm '
        f'(nonfinite_max_skips={max_skips}) within steps {first_step}..{last_step}; the last '
        'checkpoint is intact. Fix: lower --config.optim.base_lr or check the input data.')


@contextlib.contextmanager
def _finish_saves_on_error(manager):
  """On any exception, let an in-flight async save finish so the last checkpoint is whole."""
  try:
    yield
  except BaseException:
    try:
      manager.wait_until_finished()
    except Exception as e:  # Report the original error; this one only as context.
      logging.warning('An async checkpoint write also failed: %r', e)
    raise


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns the last eval."""
  is_main = jax.process_index() == 0
  checkpoint.check_writable(workdir)  # Fail now, not at the first save after an hour.
  if is_main:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))

  # ---- mesh --------------------------------------------------------------------------------
  mesh = parallel.create_mesh()
  parallel.per_process_batch_size(config.batch_size, mesh)  # Raises early if it cannot split.

  # ---- input -------------------------------------------------------------------------------
  info = data.dataset_info(config.data)
  num_train = info.num_examples[config.data.train_split]
  num_eval = info.num_examples[config.data.eval_split]
  total_steps = optim.num_train_steps(config, num_train)
  steps_per_epoch = num_train / config.batch_size
  train_iter = data.create_train_iterator(
      config.data, seed=config.seed, global_batch_size=config.batch_size,
      process_index=jax.process_index(), process_count=jax.process_count())

  def eval_batches():
    return data.create_eval_iterator(
        config.data, split=config.data.eval_split, global_batch_size=config.batch_size,
        process_index=jax.process_index(), process_count=jax.process_count())

  # ---- model and optimiser -----------------------------------------------------------------
  model = create_model_from_config(config, info.num_classes)
  schedule = optim.create_lr_schedule(config.optim, config.batch_size, steps_per_epoch,
                                      total_steps)
  tx = optim.create_optimizer(config.optim, schedule)

  # ---- state: resume or init ---------------------------------------------------------------
  image_shape = (config.data.image_size, config.data.image_size, info.image_shape[-1])
  state = create_train_state(model, tx, jax.random.PRNGKey(config.seed), image_shape, mesh,
                             ema=config.optim.ema_decay > 0)
  manager = checkpoint.create_manager(workdir, config.checkpoint)
  state, start_step = restore_or_init(manager, state, train_iter, config, mesh)
  config_dict = json.loads(config.to_json_best_effort())
  skip_nonfinite = config.nonfinite_policy == 'skip'

  # ---- compiled steps ----------------------------------------------------------------------
  # data.host_normalize=False: uint8 batches, normalised on the device inside the steps.
  pixel_norm = (None if config.data.get('host_normalize', True)
                else pipeline.mean_std(config.data))
  # One jitted step per train size of data.resize_schedule, each compiled when first used.
  size_boundaries = progressive.step_boundaries(
      progressive.parse(config.data.resize_schedule), config.data.image_size, steps_per_epoch)
  train_fns = {}

  def train_fn_at(step_index: int):
    size = progressive.size_at(size_boundaries, step_index)
    if size not in train_fns:
      train_fns[size] = create_train_step(
          model, tx, mesh, label_smoothing=config.optim.label_smoothing,
          grad_accum_steps=config.optim.grad_accum_steps, ema_decay=config.optim.ema_decay,
          skip_nonfinite=skip_nonfinite, pixel_norm=pixel_norm,
          train_size=None if size == config.data.image_size else size)
    return size, train_fns[size]

  eval_fn = create_eval_step(
      model, mesh, pixel_norm, flip=config.eval_flip, shift=config.eval_shift,
      fill=pipeline.zero_pixel(config.data) if config.eval_shift else None)

  # ---- loop --------------------------------------------------------------------------------
  writer = metrics.MetricWriter(workdir, tensorboard=config.log.tensorboard, enabled=is_main)
  eval_every = config.eval_every_steps
  if eval_every < 0:
    eval_every = max(int(round(steps_per_epoch)), 1)
  log_every = max(config.log_every_steps, 1)
  train_metrics = parallel.replicate(mesh, zero_train_metrics())
  bar = metrics.create_progress_bar(total_steps, start_step, config.log.progress_bar and is_main)
  last_log_step, last_log_time = start_step, time.time()
  eval_results: dict[str, float] = {}
  last_saved, pending_save = start_step, None

  def save(step: int, eval_metrics: dict[str, float] | None) -> None:
    nonlocal last_saved, pending_save
    best = None
    if eval_metrics and config.checkpoint.best_metric in eval_metrics:
      best = {config.checkpoint.best_metric: eval_metrics[config.checkpoint.best_metric]}
    checkpoint.save(manager, step, state, train_iter, config_dict, metrics=best,
                    save_data_state=config.checkpoint.save_data_state,
                    previous_step=pending_save)
    last_saved = pending_save = step

  step, preempted = start_step, False
  with preemption.PreemptionHandler() as signals, _finish_saves_on_error(manager):
    train_size = None
    for step in range(start_step + 1, total_steps + 1):
      batch = parallel.global_batch(mesh, next(train_iter))
      size, train_fn = train_fn_at(step - 1)
      if size != train_size and len(size_boundaries[0]) > 1:
        bar.write(f'step {step}: training at {size}x{size} (data.resize_schedule)')
      train_size = size
      state, train_metrics = train_fn(state, train_metrics, batch)
      bar.update(1)
      preempted = signals.requested  # A host bool: checking it every step costs nothing.
      save_now = step % config.checkpoint.every_steps == 0 or step == total_steps

      # Metrics are also fetched before every save: a state is only written after its loss and
      # gradient norm were checked finite, so a non-finite stop leaves the last checkpoint good.
      if step % log_every == 0 or save_now or preempted:
        fetched = jax.device_get(train_metrics)  # The only host sync between evals.
        now = time.time()
        count = max(float(fetched['count']), 1.0)
        values = {'train/loss': float(fetched['loss']) / count,
                  'train/top1': float(fetched['top1']) / count,
                  'train/grad_norm': float(fetched['grad_norm'])
                                     / max(float(fetched['steps']), 1),
                  'lr': float(schedule(step - 1)),
                  'images_per_sec': (step - last_log_step) * config.batch_size
                                    / max(now - last_log_time, 1e-9),
                  'epoch': step / steps_per_epoch, 'train/image_size': train_size}
        if skip_nonfinite:
          values['train/skipped_steps'] = float(fetched['skipped'])
          _check_skips(fetched, config.nonfinite_max_skips, last_log_step + 1, step)
        _check_finite(values, last_log_step + 1, step)
        if pending_save is not None:  # A failed async write stops the run at the next log.
          checkpoint.check_errors(manager, pending_save)
        writer.write(step, values)
        bar.set_postfix(loss=f"{values['train/loss']:.4f}", top1=f"{values['train/top1']:.3f}")
        train_metrics = parallel.replicate(mesh, zero_train_metrics(fetched['skip_run']))
        last_log_step, last_log_time = step, now

      if preempted:
        break

      step_eval = None
      if (eval_every > 0 and step % eval_every == 0) or step == total_steps:
        eval_start = time.time()
        eval_results = evaluate(eval_fn, eval_variable_sets(state), eval_batches(), mesh,
                                num_eval)
        step_eval = eval_results
        writer.write(step, eval_results)
        bar.write(f'step {step}: ' + ', '.join(
            f'{k}={v:.4f}' for k, v in eval_results.items() if not k.endswith('/count')))
        # Keep eval time out of images_per_sec: shift the window start by the eval's duration
        # (resetting it would count the steps before the eval in too short a time).
        last_log_time += time.time() - eval_start

      if save_now:
        save(step, step_eval)

    if preempted:
      t0 = time.time()
      if step > last_saved:
        save(step, None)
      checkpoint.wait(manager)  # The exit status 0 promises the checkpoint is on disk.
      manager.close()
      bar.close()
      writer.close()
      logging.warning('%s: checkpoint of step %d written in %.1f s.', signals.signal_name, step,
                      time.time() - t0)
      raise preemption.Preempted(signals.signal_name, step)

  if start_step >= total_steps and not eval_results:  # Resumed a finished run: report it again.
    eval_results = evaluate(eval_fn, eval_variable_sets(state), eval_batches(), mesh, num_eval)
  checkpoint.wait(manager)
  manager.close()
  bar.close()
  writer.close()
  if is_main:
    where = writer.jsonl_path + (f' and TensorBoard events in {writer.tensorboard_dir}'
                                 if writer.tensorboard_dir else '')
    print(f'Metrics: {where}. Final: ' + json.dumps(eval_results))
  return eval_results
