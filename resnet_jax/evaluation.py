"""Exact evaluation over a device mesh: masked sums per variable set, optional flip and
translation test-time augmentation."""

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


def translate(images: jax.Array, dy: int, dx: int, fill: jax.Array) -> jax.Array:
  """`images` [N, H, W, C] moved down by dy and right by dx pixels (negative: up, left), the
  uncovered border set to `fill` [C] (the pixel value training's pad-and-crop pads with)."""
  _, h, w, _ = images.shape
  out = jnp.broadcast_to(jnp.asarray(fill, images.dtype), images.shape)
  return out.at[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)].set(
      images[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)])


def shift_range(image_size: int) -> range:
  """The shifts (pixels) a test-time translation of `image_size` images may take: under half
  the image, so every view keeps some of it."""
  return range(image_size // 2)


def tta_views(images: jax.Array, flip: bool = False, shift: int = 0,
              fill: jax.Array | None = None) -> list[jax.Array]:
  """The views test-time augmentation averages: the image; with `shift`, its four translations
  by `shift` pixels (up, down, left, right; border `fill`, default 0); with `flip`, the mirror
  of each of these."""
  views = [images]
  if shift:
    fill = jnp.zeros(images.shape[-1]) if fill is None else fill
    views += [translate(images, dy, dx, fill)
              for dy, dx in ((shift, 0), (-shift, 0), (0, shift), (0, -shift))]
  if flip:
    views += [v[:, :, ::-1] for v in views]
  return views


def predict_log_probs(model, variables, images: jax.Array, flip: bool = False, shift: int = 0,
                      fill: jax.Array | None = None) -> jax.Array:
  """Eval-mode log-probabilities; with `flip` and/or `shift`, of the mean of the probabilities of
  the tta_views (horizontal-flip and translation test-time augmentation: one forward per view)."""
  logps = [jax.nn.log_softmax(model.apply(variables, v, train=False).astype(jnp.float32))
           for v in tta_views(images, flip, shift, fill)]
  if len(logps) == 1:
    return logps[0]
  return functools.reduce(jnp.logaddexp, logps) - jnp.log(float(len(logps)))


def eval_step(variable_sets: dict, sums: dict, batch: dict, *, model, flip: bool = False,
              shift: int = 0, fill=None) -> dict:
  """Adds masked sums for each named variable set; padded examples (mask False) count nowhere."""
  mask = batch['mask'].astype(jnp.float32)
  out = {}
  for name, variables in variable_sets.items():
    logits = predict_log_probs(model, variables, batch['image'], flip, shift, fill)
    losses = cross_entropy(logits, {'label': batch['label']}, 0.0)
    s = sums[name]
    out[name] = {
        'loss': s['loss'] + jnp.sum(losses * mask),
        'top1': s['top1'] + jnp.sum(metrics.topk_correct(logits, batch['label'], 1) * mask),
        'top5': s['top5'] + jnp.sum(metrics.topk_correct(logits, batch['label'], 5) * mask),
        'count': s['count'] + jnp.sum(mask),
    }
  return out


def create_eval_step(model, mesh, pixel_norm=None, flip: bool = False, shift: int = 0,
                     fill=None):
  """`eval_step` jitted over `mesh`, sums donated and replicated; `flip`, `shift` and `fill`
  (the normalised value of a zero pixel, for shifted views): see tta_views."""
  repl, sharded = parallel.replicated(mesh), parallel.data_sharding(mesh)
  step = normalizing_pixels(
      functools.partial(eval_step, model=model, flip=flip, shift=shift, fill=fill), pixel_norm)
  return jax.jit(parallel.with_abstract_mesh(step, mesh), in_shardings=(repl, repl, sharded),
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
