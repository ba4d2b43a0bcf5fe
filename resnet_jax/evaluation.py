"""Exact evaluation over a device mesh: masked sums per variable set, optional flip TTA."""

import functools
from collections.abc import Iterable

import jax
import jax.numpy as jnp

from resnet_jax import metrics, parallel
from resnet_jax.steps import TrainState, cross_entropy, normalizing_pixels


def zero_eval_sums(names: Iterable[str]) -> dict[str, dict[str, jax.Array]]:
  """Per variable set: on-device sums of loss, top-1, top-5 and counted (unmasked) examples."""
  return {name: {k: jnp.zeros((), jnp.float32) for k in ('loss', 'top1', 'top5', 'count')}
          for name in names}


def predict_log_probs(model, variables, images: jax.Array, flip: bool = False) -> jax.Array:
  """Eval-mode log-probabilities; with `flip`, of the mean of the image's and its mirror's
  probabilities (horizontal-flip test-time augmentation, twice the forward cost)."""
  logp = jax.nn.log_softmax(model.apply(variables, images, train=False).astype(jnp.float32))
  if not flip:
    return logp
  mirrored = jax.nn.log_softmax(
      model.apply(variables, images[:, :, ::-1], train=False).astype(jnp.float32))
  return jnp.logaddexp(logp, mirrored) - jnp.log(2.0)


def eval_step(variable_sets: dict, sums: dict, batch: dict, *, model, flip: bool = False) -> dict:
  """Adds masked sums for each named variable set; padded examples (mask False) count nowhere."""
  mask = batch['mask'].astype(jnp.float32)
  out = {}
  for name, variables in variable_sets.items():
    logits = predict_log_probs(model, variables, batch['image'], flip)
    losses = cross_entropy(logits, {'label': batch['label']}, 0.0)
    s = sums[name]
    out[name] = {
        'loss': s['loss'] + jnp.sum(losses * mask),
        'top1': s['top1'] + jnp.sum(metrics.topk_correct(logits, batch['label'], 1) * mask),
        'top5': s['top5'] + jnp.sum(metrics.topk_correct(logits, batch['label'], 5) * mask),
        'count': s['count'] + jnp.sum(mask),
    }
  return out


def create_eval_step(model, mesh, pixel_norm=None, flip: bool = False):
  """`eval_step` jitted over `mesh`, sums donated and replicated; `flip`: see predict_log_probs."""
  repl, sharded = parallel.replicated(mesh), parallel.data_sharding(mesh)
  step = normalizing_pixels(functools.partial(eval_step, model=model, flip=flip), pixel_norm)
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
