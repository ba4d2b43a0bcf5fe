"""The trainer: TrainState, jitted train and eval steps over a device mesh, and the loop.

Reads top to bottom: state -> loss and gradients -> train step -> eval step -> state init and
resume -> train_and_evaluate (mesh, input, model + optimiser, state, compiled steps, loop).

BatchNorm semantics. The train step is one `jax.jit` over a 1-D 'data' mesh with the batch
sharded along it and the state replicated. Flax BatchNorm is called WITHOUT `axis_name`: under
jit it sees the *global* batch as one array, so its mean/variance are over all examples on all
devices; XLA inserts the cross-device reductions. This is what pmap + axis_name ("SyncBN") gave,
and the running statistics are identical on every device. tests/test_train.py proves that the
same global batch on 8 simulated devices and on 1 gives the same loss, gradients and
batch_stats. With grad_accum_steps = k, statistics are over each micro-batch of batch_size / k
(as in any accumulation scheme) and the running statistics are updated k times per step.
"""

import contextlib
import functools
import json
import os
import time
from collections.abc import Iterable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from resnet_jax import checkpoint, data, metrics, optim, parallel, preemption
from resnet_jax.data import pipeline, processing

# ---- state ---------------------------------------------------------------------------------


@flax.struct.dataclass
class TrainState:
  """Everything a step updates; checkpointed as one pytree (param names are the format)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # Base key; step keys are fold_in(rng, step), so a resumed run draws the same.
  ema_params: Any  # EMA of params ({} when optim.ema_decay == 0).


_METRIC_SUMS = ('loss', 'top1', 'count', 'grad_norm', 'steps', 'skipped', 'max_skip_run')


def zero_train_metrics(skip_run: float = 0.0) -> dict[str, jax.Array]:
  """On-device sums the train step adds to; fetched and reset every log_every_steps.

  'skip_run' (non-finite steps skipped in a row, nonfinite_policy='skip') is not a sum: it
  carries over a reset, so a run of skips across a log boundary is counted whole.
  """
  sums = {k: jnp.zeros((), jnp.float32) for k in _METRIC_SUMS}
  return {**sums, 'skip_run': jnp.asarray(skip_run, jnp.float32)}


# ---- loss and gradients --------------------------------------------------------------------


def cross_entropy(logits: jax.Array, batch: dict[str, jax.Array], label_smoothing: float):
  """Per-example softmax cross-entropy; targets are 'label_probs' (mixup/cutmix) or one-hot."""
  logits = logits.astype(jnp.float32)  # bf16 compute, fp32 loss.
  if 'label_probs' in batch:
    targets = batch['label_probs'].astype(jnp.float32)
  else:
    targets = jax.nn.one_hot(batch['label'], logits.shape[-1], dtype=jnp.float32)
  if label_smoothing > 0:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def compute_gradients(model, params, batch_stats, batch, rng, label_smoothing: float):
  """Gradient of the mean loss over `batch`; aux = (per-example loss, logits, new batch_stats)."""

  def loss_fn(params):
    variables = {'params': params, 'batch_stats': batch_stats}
    logits, updates = model.apply(variables, batch['image'], train=True,
                                  mutable=['batch_stats'], rngs={'dropout': rng})
    losses = cross_entropy(logits, batch, label_smoothing)
    return losses.mean(), (losses, logits, updates.get('batch_stats', batch_stats))

  return jax.grad(loss_fn, has_aux=True)(params)


def _split_micro_batches(batch: dict[str, jax.Array], k: int) -> dict[str, jax.Array]:
  # Micro-batch j takes rows j, j+k, j+2k, ...: with the batch sharded in contiguous blocks,
  # every device then holds an equal share of every micro-batch and no data moves between them.
  def split(x):
    x = x.reshape((x.shape[0] // k, k) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  return jax.tree.map(split, batch)


def accumulate_gradients(model, params, batch_stats, batch, rng, label_smoothing: float, k: int):
  """Mean gradient over k equal micro-batches (== one big batch when the model has no BN)."""
  if k == 1:
    grads, (losses, logits, batch_stats) = compute_gradients(
        model, params, batch_stats, batch, rng, label_smoothing)
    correct = metrics.topk_correct(logits, batch['label'], 1)
    return grads, losses.sum(), correct.sum(), batch_stats

  def body(carry, micro):
    grad_sum, loss_sum, correct_sum, stats, index = carry
    grads, (losses, logits, stats) = compute_gradients(
        model, params, stats, micro, jax.random.fold_in(rng, index), label_smoothing)
    grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
    correct = metrics.topk_correct(logits, micro['label'], 1)
    return (grad_sum, loss_sum + losses.sum(), correct_sum + correct.sum(), stats, index + 1), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), batch_stats, 0)
  (grad_sum, loss_sum, correct_sum, batch_stats, _), _ = jax.lax.scan(
      body, init, _split_micro_batches(batch, k))
  grads = jax.tree.map(lambda g: g / k, grad_sum)
  return grads, loss_sum, correct_sum, batch_stats


# ---- train step ----------------------------------------------------------------------------


def train_step(state: TrainState, train_metrics: dict, batch: dict, *, model, tx,
               label_smoothing: float = 0.0, grad_accum_steps: int = 1, ema_decay: float = 0.0,
               skip_nonfinite: bool = False):
  """One optimiser update on a global batch; adds loss/top-1/count sums to `train_metrics`.

  skip_nonfinite: when the loss or gradient norm is not finite, keep params, batch_stats,
  opt_state and EMA as they were (only `step` advances: the batch is consumed) and count the
  skip. The choice is a select inside the jitted step, so it costs no host sync.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  grads, loss_sum, correct_sum, batch_stats = accumulate_gradients(
      model, state.params, state.batch_stats, batch, rng, label_smoothing, grad_accum_steps)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = state.ema_params
  if ema_decay > 0:
    ema_params = optim.ema_update(ema_params, params, ema_decay)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, ema_params=ema_params)
  count = jnp.asarray(batch['label'].shape[0], jnp.float32)
  grad_norm = optax.tree.norm(grads)
  m = train_metrics
  if not skip_nonfinite:
    return new_state, {**m, 'loss': m['loss'] + loss_sum, 'top1': m['top1'] + correct_sum,
                       'count': m['count'] + count, 'grad_norm': m['grad_norm'] + grad_norm,
                       'steps': m['steps'] + 1}
  ok = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm)
  kept = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
  new_state = kept.replace(step=state.step + 1)
  okf = ok.astype(jnp.float32)
  skip_run = jnp.where(ok, 0.0, m['skip_run'] + 1)
  # Skipped steps add nothing to the averages, which then describe the updates actually made.
  return new_state, {**m, 'loss': m['loss'] + jnp.where(ok, loss_sum, 0.0),
                     'top1': m['top1'] + okf * correct_sum, 'count': m['count'] + okf * count,
                     'grad_norm': m['grad_norm'] + jnp.where(ok, grad_norm, 0.0),
                     'steps': m['steps'] + okf, 'skipped': m['skipped'] + 1 - okf,
                     'skip_run': skip_run, 'max_skip_run': jnp.maximum(m['max_skip_run'],
                                                                        skip_run)}


def normalizing_pixels(step_fn, pixel_norm):
  """`step_fn` taking uint8 images when pixel_norm=(mean, std) is given (data.host_normalize=False).

  Normalising inside the jitted step moves a quarter of the bytes from host to device and takes
  the work off the input pipeline's cores.
  """
  if pixel_norm is None:
    return step_fn
  mean, std = pixel_norm

  def with_norm(*args):
    *rest, batch = args
    batch = {**batch, 'image': processing.normalize_pixels(batch['image'], mean, std)}
    return step_fn(*rest, batch)

  return with_norm


def create_train_step(model, tx, mesh, *, label_smoothing=0.0, grad_accum_steps=1, ema_decay=0.0,
                      skip_nonfinite=False, pixel_norm=None):
  """`train_step` jitted over `mesh`: batch sharded on 'data', state and metrics replicated."""
  step = functools.partial(train_step, model=model, tx=tx, label_smoothing=label_smoothing,
                           grad_accum_steps=grad_accum_steps, ema_decay=ema_decay,
                           skip_nonfinite=skip_nonfinite)
  step = normalizing_pixels(step, pixel_norm)
  repl, sharded = parallel.replicated(mesh), parallel.data_sharding(mesh)
  # Donating state and metrics lets XLA update them in place: no second copy of the model.
  return jax.jit(step, in_shardings=(repl, repl, sharded), out_shardings=(repl, repl),
                 donate_argnums=(0, 1))


# ---- eval step -----------------------------------------------------------------------------


def zero_eval_sums(names: Iterable[str]) -> dict[str, dict[str, jax.Array]]:
  """Per variable set: on-device sums of loss, top-1, top-5 and counted (unmasked) examples."""
  return {name: {k: jnp.zeros((), jnp.float32) for k in ('loss', 'top1', 'top5', 'count')}
          for name in names}


def eval_step(variable_sets: dict, sums: dict, batch: dict, *, model) -> dict:
  """Adds masked sums for each named variable set; padded examples (mask False) count nowhere."""
  mask = batch['mask'].astype(jnp.float32)
  out = {}
  for name, variables in variable_sets.items():
    logits = model.apply(variables, batch['image'], train=False)
    losses = cross_entropy(logits, {'label': batch['label']}, 0.0)
    s = sums[name]
    out[name] = {
        'loss': s['loss'] + jnp.sum(losses * mask),
        'top1': s['top1'] + jnp.sum(metrics.topk_correct(logits, batch['label'], 1) * mask),
        'top5': s['top5'] + jnp.sum(metrics.topk_correct(logits, batch['label'], 5) * mask),
        'count': s['count'] + jnp.sum(mask),
    }
  return out


def create_eval_step(model, mesh, pixel_norm=None):
  """`eval_step` jitted over `mesh`, sums donated and replicated."""
  repl, sharded = parallel.replicated(mesh), parallel.data_sharding(mesh)
  step = normalizing_pixels(functools.partial(eval_step, model=model), pixel_norm)
  return jax.jit(step, in_shardings=(repl, repl, sharded),
                 out_shardings=repl, donate_argnums=(1,))


def evaluate(eval_fn, variable_sets: dict, batches: Iterable[dict], mesh,
             expected_count: int | None = None, prefix: str = 'eval') -> dict[str, float]:
  """One exact pass: {'eval/loss', 'eval/top1', 'eval/top5'} (+ 'eval_<name>/…' per extra set)."""
  sums = jax.device_put(zero_eval_sums(variable_sets), parallel.replicated(mesh))
  for local_batch in batches:
    sums = eval_fn(variable_sets, sums, parallel.global_batch(mesh, local_batch))
  sums = jax.device_get(sums)  # The only host sync of the whole pass.
  results = {}
  for name, s in sums.items():
    count = int(round(float(s['count'])))
    if expected_count is not None and count != expected_count:
      raise RuntimeError(
          f'evaluation counted {count} examples but the split has {expected_count}; the eval '
          "iterator must yield every example exactly once with padding marked by 'mask'.")
    key = prefix if not name else f'{prefix}_{name}'
    denom = max(count, 1)
    results.update({f'{key}/{k}': float(s[k]) / denom for k in ('loss', 'top1', 'top5')})
    results[f'{key}/count'] = count
  return results


def eval_variable_sets(state: TrainState) -> dict[str, dict]:
  """Live weights under '' and, when EMA is on, EMA weights (with live BN statistics) as 'ema'."""
  sets = {'': {'params': state.params, 'batch_stats': state.batch_stats}}
  if state.ema_params:
    sets['ema'] = {'params': state.ema_params, 'batch_stats': state.batch_stats}
  return sets


# ---- state init and resume -----------------------------------------------------------------


def create_train_state(model, tx, rng: jax.Array, image_shape: tuple[int, int, int], mesh,
                       ema: bool = False) -> TrainState:
  """Fresh state, initialised directly as replicated arrays on `mesh`."""

  def init(rng):
    init_rng, state_rng = jax.random.split(rng)
    variables = model.init({'params': init_rng}, jnp.zeros((1, *image_shape), jnp.float32),
                           train=False)
    params = variables['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params),
                      rng=state_rng, ema_params=params if ema else {})

  return jax.jit(init, out_shardings=parallel.replicated(mesh))(rng)


HEAD = 'fc'  # The classifier's module name: re-initialised when fine-tuning to new classes.
_TORCH_SUFFIXES = ('.pth', '.pt', '.safetensors')


def load_init_weights(path: str, model_config, mesh) -> dict[str, Any]:
  """{'params', 'batch_stats'} from our checkpoint (step dir, checkpoints dir or workdir) or a
  torchvision .pth/.pt/.safetensors file, at the shapes stored there."""
  if path.endswith(_TORCH_SUFFIXES) and os.path.isfile(path):
    from resnet_jax.interop import torchvision  # Imported late: only fine-tuning needs it.
    overrides = {'scan_blocks': True} if model_config.get('scan_blocks', False) else {}
    variables = torchvision.from_torchvision(path, model_config.name, **overrides)
    return jax.device_put(variables, parallel.replicated(mesh))
  return checkpoint.restore_weights(path, parallel.replicated(mesh))


def merge_init_weights(state: TrainState, loaded: dict[str, Any], source: str) -> TrainState:
  """`state` with `loaded` params/batch_stats; a head of another shape keeps its fresh init."""
  fresh = {'params': state.params, 'batch_stats': state.batch_stats}
  saved_shapes = checkpoint.tree_shapes(loaded)
  flat, treedef = jax.tree_util.tree_flatten_with_path(fresh)
  reinit, mismatched, leaves = [], [], []
  for path, leaf in flat:
    name = checkpoint.path_name(path)
    value = _lookup(loaded, name)
    if value is not None and tuple(value.shape) == tuple(leaf.shape):
      leaves.append(jnp.asarray(value, leaf.dtype))
    elif value is not None and name.split('/')[1:2] == [HEAD]:
      reinit.append(f'{name} {tuple(value.shape)} -> {tuple(leaf.shape)}')
      leaves.append(leaf)
    else:
      mismatched.append(name)
      leaves.append(leaf)
  if mismatched:  # Outside the head a different shape is another architecture: refuse.
    fresh_shapes = checkpoint.tree_shapes(fresh)
    checkpoint.check_shapes(saved_shapes, {k: fresh_shapes[k] for k in mismatched},
                            f'init_checkpoint {source}')
  if reinit:
    logging.warning('init_checkpoint %s: the head %r has another number of classes; it is '
                    're-initialised (%s). Every other weight is loaded.', source, HEAD,
                    ', '.join(reinit))
  merged = jax.tree_util.tree_unflatten(treedef, leaves)
  merged = jax.device_put(merged, jax.tree.map(lambda x: x.sharding, fresh))
  ema = merged['params'] if state.ema_params else state.ema_params
  return state.replace(params=merged['params'], batch_stats=merged['batch_stats'],
                       ema_params=ema)


def _lookup(tree: dict, name: str):
  for key in name.split('/'):
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree


def restore_or_init(manager, state: TrainState, data_iterator, config, mesh):
  """(state, start_step) in the resume order: the workdir's latest *valid* checkpoint (state and
  data position) -> config.init_checkpoint (weights only, step 0) -> the fresh `state`."""
  abstract = checkpoint.abstract_like(state)
  restored = checkpoint.restore_latest(manager, abstract, data_iterator,
                                       restore_data_state=config.checkpoint.save_data_state)
  if restored is not None:
    logging.warning('Resuming from checkpoint step %d in %s.', restored[1], manager.directory)
    return restored
  if config.init_checkpoint:
    loaded = load_init_weights(config.init_checkpoint, config.model, mesh)
    logging.warning('No checkpoint in %s: starting from the weights in init_checkpoint=%s.',
                    manager.directory, config.init_checkpoint)
    return merge_init_weights(state, loaded, config.init_checkpoint), 0
  return state, 0


# ---- train_and_evaluate --------------------------------------------------------------------


def create_model_from_config(config: ml_collections.ConfigDict, num_classes: int):
  """The configured model; bf16 compute when config.half_precision (params stay fp32)."""
  from resnet_jax.models import create_model  # Imported late: models is a sibling package.
  # Fields at their "unset" value are not passed, so each model keeps its own default (GoogLeNet's
  # BN epsilon is 1e-3, Keras' momentum 0.99) and families without the option still build.
  unset = {'bn_momentum': -1.0, 'bn_epsilon': -1.0, 'conv_impl': 'auto', 'scan_blocks': False,
           'remat': False}
  fields = {k: v for k, v in config.model.items() if k != 'name' and unset.get(k, None) != v}
  return create_model(
      config.model.name, num_classes=num_classes,
      dtype=jnp.bfloat16 if config.half_precision else jnp.float32, **fields)


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
  train_fn = create_train_step(
      model, tx, mesh, label_smoothing=config.optim.label_smoothing,
      grad_accum_steps=config.optim.grad_accum_steps, ema_decay=config.optim.ema_decay,
      skip_nonfinite=skip_nonfinite, pixel_norm=pixel_norm)
  eval_fn = create_eval_step(model, mesh, pixel_norm)

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
    for step in range(start_step + 1, total_steps + 1):
      batch = parallel.global_batch(mesh, next(train_iter))
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
                  'epoch': step / steps_per_epoch}
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
