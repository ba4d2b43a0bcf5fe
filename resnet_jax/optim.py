"""Learning-rate schedules, the SGD optimiser with weight-decay masks, and the param EMA.

Weight decay modes (config.optim.weight_decay_mode):
  coupled   -- L2 added to the gradient before momentum: g += wd * w. This is the ResNet paper's
               and torch.optim.SGD's `weight_decay`, and the flax ImageNet example's L2 loss term.
  decoupled -- decay applied after momentum, scaled by the LR schedule: w -= lr * (m + wd * w)
               (SGDW, Loshchilov & Hutter), so momentum never accumulates the decay.
Leaves whose name is in `weight_decay_exclude` (default BN 'scale' and every 'bias') get none.
"""

import math
from collections.abc import Sequence

import jax
import ml_collections
import optax


def peak_learning_rate(optim: ml_collections.ConfigDict, batch_size: int) -> float:
  """Linear scaling rule (Goyal et al. 2017): base_lr * batch_size / lr_batch_base."""
  return optim.base_lr * batch_size / optim.lr_batch_base


def _warmup_steps(optim: ml_collections.ConfigDict, steps_per_epoch: float) -> int:
  if optim.warmup_steps > 0:
    return int(optim.warmup_steps)
  return int(round(optim.warmup_epochs * steps_per_epoch))


def _decay_boundaries(optim: ml_collections.ConfigDict, steps_per_epoch: float) -> list[int]:
  if optim.decay_boundaries_steps:
    return [int(s) for s in optim.decay_boundaries_steps]
  return [int(round(e * steps_per_epoch)) for e in optim.decay_boundaries_epochs]


def create_lr_schedule(optim: ml_collections.ConfigDict, batch_size: int, steps_per_epoch: float,
                       total_steps: int) -> optax.Schedule:
  """Warm-up (linear or constant) followed by cosine, multistep, constant or one-cycle decay."""
  peak = peak_learning_rate(optim, batch_size)
  warmup = min(_warmup_steps(optim, steps_per_epoch), total_steps)
  if optim.schedule == 'onecycle':
    # One-cycle has its own cosine warm-up; warmup_steps sets where the peak falls.
    return optax.cosine_onecycle_schedule(
        total_steps, peak, pct_start=max(warmup, 1) / max(total_steps, 2))
  if optim.schedule == 'cosine':
    main = optax.cosine_decay_schedule(peak, max(total_steps - warmup, 1))
  elif optim.schedule == 'multistep':
    # Boundaries count from step 0 of the run (as in the paper), not from the end of warm-up.
    scales = {b - warmup: optim.decay_factor for b in _decay_boundaries(optim, steps_per_epoch)
              if b > warmup}
    main = optax.piecewise_constant_schedule(peak, scales)
  elif optim.schedule == 'constant':
    main = optax.constant_schedule(peak)
  else:
    raise ValueError(f"optim.schedule={optim.schedule!r} is unknown; expected cosine, "
                     f"multistep, constant or onecycle.")
  if warmup == 0:
    return main
  if optim.warmup_mode == 'constant':
    # ResNet-110 in the paper: hold a small LR for the first iterations, then jump to the peak.
    head = optax.constant_schedule(optim.warmup_init_lr)
  else:
    head = optax.linear_schedule(optim.warmup_init_lr, peak, warmup)
  return optax.join_schedules([head, main], [warmup])


def weight_decay_mask(params, exclude: Sequence[str]):
  """True for every leaf that is decayed: those whose own name is not in `exclude`."""
  excluded = {name for name in exclude if name}

  def decayed(path, _):
    return getattr(path[-1], 'key', None) not in excluded

  return jax.tree_util.tree_map_with_path(decayed, params)


def create_optimizer(optim: ml_collections.ConfigDict,
                     schedule: optax.Schedule) -> optax.GradientTransformation:
  """SGD (momentum, nesterov) with coupled or decoupled, masked weight decay."""
  mask = lambda params: weight_decay_mask(params, optim.weight_decay_exclude)
  decay = optax.add_decayed_weights(optim.weight_decay, mask=mask)
  momentum = optim.momentum or None  # optax.sgd treats None as plain SGD without a trace.
  if optim.weight_decay_mode == 'coupled':
    return optax.chain(decay, optax.sgd(schedule, momentum=momentum, nesterov=optim.nesterov))
  if optim.weight_decay_mode == 'decoupled':
    trace = (optax.trace(decay=optim.momentum, nesterov=optim.nesterov) if momentum
             else optax.identity())
    return optax.chain(trace, decay, optax.scale_by_learning_rate(schedule))
  raise ValueError(f"optim.weight_decay_mode={optim.weight_decay_mode!r} is unknown; "
                   f"expected 'coupled' or 'decoupled'.")


def ema_update(ema_params, params, decay: float):
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
  return optax.incremental_update(params, ema_params, step_size=1.0 - decay)


def num_train_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
  """total_steps if set, else ceil(num_epochs * examples / batch_size)."""
  if config.total_steps > 0:
    return int(config.total_steps)
  return int(math.ceil(config.num_epochs * num_train_examples / config.batch_size))
