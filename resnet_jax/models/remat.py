"""Per-block rematerialisation whose recomputation waits for the block's output gradient.

`nn.remat` (jax.checkpoint) keeps a block's inputs and recomputes its activations in the
backward pass, but nothing orders that recomputation after the gradient reaching the block:
its only inputs are values the forward pass already produced, so a scheduler may run every
block's recomputation early, when all of them are live at once. XLA:CPU does: ResNet-50 b16
with `nn.remat` had 30% *more* peak memory than without (`python -m resnet_jax.bench train`).

`remat_call(block, x)` makes the dependency explicit: the backward rule derives the saved
inputs it recomputes from through the incoming gradient (see _untied_from_forward), so the
block's forward is recomputed only once its output gradient exists — the order backprop
needs, one block's activations live at a time. Values, gradients and BatchNorm updates equal
the plain call (tested).

`remat_chain` goes further for a run of bottleneck blocks: it keeps the run's input and each
block's narrow tensor (the 3x3 stage's output, a quarter of the block output's width) and
recomputes the wide block inputs from them in the backward pass.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models.layers import exact_zero, stored


def _call(block: nn.Module, x):
  return block(x)


_checkpointed = nn.checkpoint(_call)


def _forward(block: nn.Module, x):
  # The vjp of a checkpointed call keeps only the call's inputs (parameters, x) as residuals.
  y, vjp_fn = nn.vjp(_checkpointed, block, x)
  params = jax.tree.leaves(block.variables.get('params', {}))
  if params and isinstance(y, jax.Array) and y.shape != x.shape:
    # A block with a projection shortcut ends in relu(bn(conv3) + bn(projection)); unless its
    # output is stored, XLA:CPU keeps both wide operands from the forward pass to the block's
    # backward instead (ResNet-50 b16, one device: ~96 MB, the remat step's peak 840 -> 787
    # MB). Only these blocks: storing every block's output raised that peak to 0.92 GB (XLA
    # packed its buffers worse although fewer bytes were live).
    y = stored(y, params[0])
  return y, vjp_fn


def _untied_from_forward(residuals, grad):
  """The residuals that carry the batch, + 0 * (one element of `grad` per example).

  The same values, but not the forward's. Two things this buys that `nn.remat` alone did not
  on XLA:CPU, whose pipeline drops the optimisation barriers jax.checkpoint relies on: the
  recomputation can no longer be merged (CSE) with the forward computation it repeats — which
  silently undid the remat — and it cannot start before the block's output gradient exists.
  Untying the block's input is enough for both (every recomputed activation depends on it);
  parameters stay as they are. The zero is taken per example, g[:, 0, ..., 0], so on a
  batch-sharded mesh each device reads only its own examples: a scalar from the sharded
  gradient would take an all-reduce per block, which XLA merges with later gradient
  all-reduces, delaying the recomputation it was meant to order (ResNet-50 b16, two devices).
  0 * g is not folded for floats; a non-finite g makes the recomputed gradients non-finite,
  which the step's non-finite check catches as it would have anyway.
  """
  g = jax.lax.stop_gradient(grad)
  floating = [jnp.issubdtype(r.dtype, jnp.floating) for r in residuals]
  batched = [f and g.ndim > 0 and r.ndim == g.ndim and r.shape[0] == g.shape[0]
             for r, f in zip(residuals, floating)]
  if not any(batched):
    # No batch-shaped residual (not a block of this codebase): tie every float to one scalar.
    zero = 0.0 * g.reshape(-1)[0]
    return [r + zero.astype(r.dtype) if f else r for r, f in zip(residuals, floating)]
  per_example = 0.0 * g[(slice(None),) + (0,) * (g.ndim - 1)]
  return [r + per_example.reshape((-1,) + (1,) * (r.ndim - 1)).astype(r.dtype) if b else r
          for r, b in zip(residuals, batched)]


def _backward(vjp_fn, grad):
  residuals, treedef = jax.tree.flatten(vjp_fn)
  return jax.tree.unflatten(treedef, _untied_from_forward(residuals, grad))(grad)


def _backward_in_order(vjp_fn, grad):
  """_backward, with the input gradient tied to the block's parameter gradients.

  In a long residual chain XLA:CPU's scheduler ran the input gradients through block after
  block first and deferred each block's kernel gradients, keeping every recomputed activation
  and output gradient they read alive: with remat, ResNet-152 b8 on one device planned 1.67 GB
  against 1.76 without. The input gradient that leaves a block now reads one element of each
  of its parameter gradients (exact_zero: + 0, non-finite read as 0), so the block's backward
  pass ends before the next one starts: 0.94 GB (ResNet._remat_in_order_blocks says where;
  on all of ResNet-50 b16's blocks it raised the peak, 0.566 -> 0.688 GB). On a mesh each
  parameter gradient is all-reduced before it is read, so the tie also orders the block's
  gradient all-reduce before the next block's backward pass.
  """
  params_grad, x_grad = _backward(vjp_fn, grad)
  firsts = [leaf.ravel()[0] for leaf in jax.tree.leaves(params_grad) if leaf.size]
  if firsts:
    x_grad = x_grad + exact_zero(sum(firsts)).astype(x_grad.dtype)
  return params_grad, x_grad


remat_call = nn.custom_vjp(_call, forward_fn=_forward, backward_fn=_backward)
# The same, for the blocks of long residual chains (see _backward_in_order).
remat_call_in_order = nn.custom_vjp(_call, forward_fn=_forward, backward_fn=_backward_in_order)


def remat_pure(fn):
  """The same rematerialisation for a pure function `fn(consts, x) -> (y, aux)` of arrays.

  Only `consts` (e.g. parameters) and `x` are kept; the backward pass recomputes `fn` from `x`
  untied by y's gradient. `aux` (e.g. new BatchNorm statistics) is an output that no loss reads.
  """

  @jax.custom_vjp
  def call(consts, x):
    return fn(consts, x)

  def forward(consts, x):
    return fn(consts, x), (consts, x)

  def backward(residuals, grads):
    consts, x = residuals
    (x,) = _untied_from_forward([x], grads[0])
    return jax.vjp(fn, consts, x)[1](grads)

  call.defvjp(forward, backward)
  return call


def remat_function(fn, *consts):
  """The same rematerialisation for a function of one array (a pooling), `fn(x, *consts)`."""
  pure = remat_pure(lambda consts, x: (fn(x, *consts), ()))
  return lambda x: pure(consts, x)[0]


def remat_chain(blocks, tails):
  """Rematerialisation of a run of blocks that keeps its input and each block's narrow tensor.

  `blocks[k](consts_k, x) -> (y, narrow, aux)` is block k; `tails[k](consts_k, narrow, x) -> y`
  recomputes its output from its narrow tensor and its input (for a bottleneck: conv3, BN, the
  shortcut, the addition, ReLU). Per-block remat keeps every block's input, the previous block's
  wide output (a bottleneck's is 4x the width of its 3x3 stage). This keeps the run's input and,
  for every block but the last, the narrow tensor; the backward pass of block k first recomputes
  its input through the tails of blocks 0..k-1, then block k from it, so at most one recomputed
  wide input is live at a time. Returns call(consts, x) -> (y, [aux_k]); no loss may read aux.
  """

  @jax.custom_vjp
  def call(consts, x):
    return _run(consts, x)[::2]

  def _run(consts, x):
    narrows, auxes = [], []
    for block, c in zip(blocks, consts):
      x, narrow, aux = block(c, x)
      narrows.append(narrow)
      auxes.append(aux)
    return x, narrows, auxes

  def forward(consts, x):
    y, narrows, auxes = _run(consts, x)
    return (y, auxes), (consts, x, narrows[:-1])

  def backward(residuals, grads):
    consts, x0, narrows = residuals
    grad = grads[0]  # No loss reads the aux outputs.
    consts_grads = [None] * len(blocks)
    for k in reversed(range(len(blocks))):
      # Every recomputed value must depend on the gradient, the narrow tensors too: conv3 of
      # a forward narrow tensor would otherwise be merged with the forward's (CSE), which then
      # keeps each wide conv3 output alive until the backward pass.
      x, *untied = _untied_from_forward([x0, *narrows[:k]], grad)
      for tail, c, narrow in zip(tails[:k], consts[:k], untied):
        x = tail(c, narrow, x)
      _, vjp_fn = jax.vjp(lambda c, x, k=k: blocks[k](c, x)[0], consts[k], x)
      consts_grads[k], grad = vjp_fn(grad)
    return consts_grads, grad

  call.defvjp(forward, backward)
  return call
