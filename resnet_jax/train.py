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

from resnet_jax import checkpoint, data, metrics, optim, parallel

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


def zero_train_metrics() -> dict[str, jax.Array]:
  """On-device sums the train step adds to; fetched and reset every log_every_steps."""
  return {k: jnp.zeros((), jnp.float32) for k in ('loss', 'top1', 'count', 'grad_norm', 'steps')}


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
               label_smoothing: float = 0.0, grad_accum_steps: int = 1, ema_decay: float = 0.0):
  """One optimiser update on a global batch; adds loss/top-1/count sums to `train_metrics`."""
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
  new_metrics = {
      'loss': train_metrics['loss'] + loss_sum,
      'top1': train_metrics['top1'] + correct_sum,
      'count': train_metrics['count'] + count,
      'grad_norm': train_metrics['grad_norm'] + optax.tree.norm(grads),
      'steps': train_metrics['steps'] + 1,
  }
  return new_state, new_metrics


def create_train_step(model, tx, mesh, *, label_smoothing=0.0, grad_accum_steps=1, ema_decay=0.0):
  """`train_step` jitted over `mesh`: batch sharded on 'data', state and metrics replicated."""
  step = functools.partial(train_step, model=model, tx=tx, label_smoothing=label_smoothing,
                           grad_accum_steps=grad_accum_steps, ema_decay=ema_decay)
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


def create_eval_step(model, mesh):
  """`eval_step` jitted over `mesh`, sums donated and replicated."""
  repl, sharded = parallel.replicated(mesh), parallel.data_sharding(mesh)
  return jax.jit(functools.partial(eval_step, model=model), in_shardings=(repl, repl, sharded),
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


def restore_or_init(manager, state: TrainState, data_iterator, init_checkpoint: str):
  """(state, start_step): workdir's latest checkpoint -> init_checkpoint weights -> `state`."""
  abstract = checkpoint.abstract_like(state)
  restored = checkpoint.restore_latest(manager, abstract, data_iterator)
  if restored is not None:
    return restored
  if init_checkpoint:
    loaded = checkpoint.restore_state(init_checkpoint, abstract)
    return state.replace(params=loaded.params, batch_stats=loaded.batch_stats), 0
  return state, 0


# ---- train_and_evaluate --------------------------------------------------------------------


def create_model_from_config(config: ml_collections.ConfigDict, num_classes: int):
  """The configured model; bf16 compute when config.half_precision (params stay fp32)."""
  from resnet_jax.models import create_model  # Imported late: models is a sibling package.
  return create_model(
      config.model.name, num_classes=num_classes,
      dtype=jnp.bfloat16 if config.half_precision else jnp.float32,
      zero_init_residual=config.model.zero_init_residual, bn_momentum=config.model.bn_momentum,
      bn_epsilon=config.model.bn_epsilon)


def _check_finite(values: dict[str, float], first_step: int, last_step: int) -> None:
  for key in ('train/loss', 'train/grad_norm'):
    if not np.isfinite(values[key]):
      raise FloatingPointError(
          f'{key} is {values[key]} somewhere in steps {first_step}..{last_step}; lower '
          '--config.optim.base_lr, add warm-up (optim.warmup_epochs), or check the input data.')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns the last eval."""
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
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
  manager = checkpoint.create_manager(workdir, config.checkpoint.keep)
  state, start_step = restore_or_init(manager, state, train_iter, config.init_checkpoint)

  # ---- compiled steps ----------------------------------------------------------------------
  train_fn = create_train_step(
      model, tx, mesh, label_smoothing=config.optim.label_smoothing,
      grad_accum_steps=config.optim.grad_accum_steps, ema_decay=config.optim.ema_decay)
  eval_fn = create_eval_step(model, mesh)

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
  for step in range(start_step + 1, total_steps + 1):
    batch = parallel.global_batch(mesh, next(train_iter))
    state, train_metrics = train_fn(state, train_metrics, batch)
    bar.update(1)

    if step % log_every == 0 or step == total_steps:
      fetched = jax.device_get(train_metrics)  # The only host sync between evals.
      now = time.time()
      count = max(float(fetched['count']), 1.0)
      values = {'train/loss': float(fetched['loss']) / count,
                'train/top1': float(fetched['top1']) / count,
                'train/grad_norm': float(fetched['grad_norm']) / max(float(fetched['steps']), 1),
                'lr': float(schedule(step - 1)),
                'images_per_sec': (step - last_log_step) * config.batch_size
                                  / max(now - last_log_time, 1e-9),
                'epoch': step / steps_per_epoch}
      _check_finite(values, last_log_step + 1, step)
      writer.write(step, values)
      bar.set_postfix(loss=f"{values['train/loss']:.4f}", top1=f"{values['train/top1']:.3f}")
      train_metrics = parallel.replicate(mesh, zero_train_metrics())
      last_log_step, last_log_time = step, now

    if (eval_every > 0 and step % eval_every == 0) or step == total_steps:
      eval_results = evaluate(eval_fn, eval_variable_sets(state), eval_batches(), mesh, num_eval)
      writer.write(step, eval_results)
      bar.write(f'step {step}: ' + ', '.join(
          f'{k}={v:.4f}' for k, v in eval_results.items() if not k.endswith('/count')))
      last_log_time = time.time()  # Keep eval time out of images_per_sec.

    if step % config.checkpoint.every_steps == 0 or step == total_steps:
      checkpoint.save(manager, step, state, train_iter)

  if start_step >= total_steps and not eval_results:  # Resumed a finished run: report it again.
    eval_results = evaluate(eval_fn, eval_variable_sets(state), eval_batches(), mesh, num_eval)
  manager.wait_until_finished()
  manager.close()
  bar.close()
  writer.close()
  if is_main:
    where = writer.jsonl_path + (f' and TensorBoard events in {writer.tensorboard_dir}'
                                 if writer.tensorboard_dir else '')
    print(f'Metrics: {where}. Final: ' + json.dumps(eval_results))
  return eval_results
