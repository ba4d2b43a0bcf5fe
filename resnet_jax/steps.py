"""The jitted train step over a device mesh: TrainState, loss and gradients, the update.

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
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from resnet_jax import metrics, optim, parallel, progressive
from resnet_jax.data import processing
from resnet_jax.models.layers import exact_zero

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


def norm_after_update(grads, new_params) -> jax.Array:
  """The global L2 norm of `grads`, computed so that each leaf's update comes first.

  Equal to optax.tree.norm(grads) for float32 gradients (same squares, same summation order).
  Each leaf's sum of squares reads its new parameter through + 0 * (one finite element of it).
  Without that, the one scalar read from every gradient made XLA:CPU's scheduler run the
  backward pass to its end before any update, so all parameter gradients were live together at
  the peak; with it, each leaf's update follows its gradient. Planned peak memory, one device:
  ResNet-50 b16 1.164 -> 1.114 GB, with remat 0.776 -> 0.688 GB. (On a mesh the gradients'
  combined all-reduce holds them anyway.) The element comes from the new, replicated,
  parameter: no communication. The zero is exact (a non-finite element reads as 0).
  """
  def squared(grad, param):
    total = jnp.sum(jnp.square(grad.astype(jnp.float32)))
    if not param.size:
      return total
    return total + exact_zero(param.ravel()[0]).astype(jnp.float32)

  return jnp.sqrt(sum(jax.tree.leaves(jax.tree.map(squared, grads, new_params))))


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
  grad_norm = norm_after_update(grads, params)
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


def resizing_images(step_fn, size: int | None):
  """`step_fn` on images resized to size x size on the device (progressive.py); None = as fed."""
  if size is None:
    return step_fn

  def with_resize(*args):
    *rest, batch = args
    return step_fn(*rest, {**batch, 'image': progressive.resize_images(batch['image'], size)})

  return with_resize


def create_train_step(model, tx, mesh, *, label_smoothing=0.0, grad_accum_steps=1, ema_decay=0.0,
                      skip_nonfinite=False, pixel_norm=None, train_size=None):
  """`train_step` jitted over `mesh`: batch sharded on 'data', state and metrics replicated.

  train_size: resize the (normalised) images to train_size x train_size inside the step.
  """
  step = functools.partial(train_step, model=model, tx=tx, label_smoothing=label_smoothing,
                           grad_accum_steps=grad_accum_steps, ema_decay=ema_decay,
                           skip_nonfinite=skip_nonfinite)
  step = normalizing_pixels(resizing_images(step, train_size), pixel_norm)
  repl, sharded = parallel.replicated(mesh), parallel.data_sharding(mesh)
  # Donating state and metrics lets XLA update them in place: no second copy of the model.
  return jax.jit(parallel.with_abstract_mesh(step, mesh), in_shardings=(repl, repl, sharded),
                 out_shardings=(repl, repl), donate_argnums=(0, 1))


# ---- state init ----------------------------------------------------------------------------


# Initialising compiles one random-number fusion per parameter leaf (the forward pass that
# model.init traces is dead code), and on CPU LLVM's default level (O2) spends most of that
# compile optimising them. At O1 the values are the same bit for bit and the run time the same,
# while the compile is 1.4-2.6x faster (2026-12-07, one CPU device, cache off, compile + run:
# CIFAR ResNet-20 4.75 -> 1.82 s, ResNet-50 7.36 -> 4.67 s, ResNet-152 20.1 -> 14.8 s; at O0
# runs are up to 6x slower and values differ by an ulp; bench train's init_s, which includes
# placing the state: ResNet-50 ~2 s less, docs/performance.md). The train step gains nothing
# from it (WRN-16-2: compile 4.22 vs 4.13 s, same speed), so only init uses it. GPU/TPU:
# unmeasured, their defaults.
CPU_INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 1}


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

  on_cpu = mesh.devices.flat[0].platform == 'cpu'
  return jax.jit(init, out_shardings=parallel.replicated(mesh),
                 compiler_options=CPU_INIT_COMPILER_OPTIONS if on_cpu else None)(rng)

