"""Every lowering computes the same function, with the same parameters, as the plain path."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.models import create_model, model_fields
from resnet_jax.models.layers import (
  conv_canonical_grads,
  max_pool_3x3_s2,
  pointwise_matmul,
  resolve_conv_impl,
)
from tests import fast_compile
from tests.compiled_step import compiled_train_step


def _rel_err(a, b):
  return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-12))


@pytest.mark.parametrize('impl', ['matmul', 'cpu'])
@pytest.mark.parametrize('name', ['resnet50', 'resnet50d', 'resnet50_v1', 'preact_resnet50'])
def test_lowering_equals_xla_forward_and_gradients(name, impl):
  stages = (1,) * len(model_fields(name)['stage_sizes'])
  x = jax.random.normal(jax.random.key(1), (2, 40, 40, 3))
  ref = create_model(name, stage_sizes=stages, conv_impl='xla', zero_init_residual=False)
  mm = create_model(name, stage_sizes=stages, conv_impl=impl, zero_init_residual=False)
  v = ref.init(jax.random.key(0), x)
  # Same parameter tree, names and initial values: the lowering is not part of the format.
  jax.tree.map(np.testing.assert_array_equal, v, mm.init(jax.random.key(0), x))

  def loss(model, params):
    logits, _ = model.apply({**v, 'params': params}, x, train=True, mutable=['batch_stats'])
    return jnp.sum(logits**2)

  for train in (False, True):
    out_ref = ref.apply(v, x, train=train, mutable=['batch_stats'])[0]
    out_mm = mm.apply(v, x, train=train, mutable=['batch_stats'])[0]
    assert _rel_err(out_mm, out_ref) <= 1e-5
  g_ref = jax.grad(lambda p: loss(ref, p))(v['params'])
  g_mm = jax.grad(lambda p: loss(mm, p))(v['params'])
  errs = jax.tree.map(_rel_err, g_mm, g_ref)
  assert max(jax.tree.leaves(errs)) <= 1e-5, errs


@pytest.mark.parametrize('kernel_size, padding', [
  ((3, 3), ((1, 1), (1, 1))), ((3, 3), ((0, 0), (0, 0))), ((5, 3), ((2, 1), (0, 2))),
  ((7, 7), ((3, 3), (3, 3))),
])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_canonical_gradient_convolutions_equal_jax_gradients(kernel_size, padding, dtype):
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (3, 11, 9, 5), dtype)
  w = jax.random.normal(kw, (*kernel_size, 5, 4), dtype)

  def ref(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), padding,
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  _assert_equal_vjps(lambda x, w: conv_canonical_grads(x, w, padding), ref, (x, w), kg)


def _assert_equal_vjps(fn, ref, args, key):
  """Equal outputs, and gradients within float32 (bf16) rounding, for one random cotangent."""
  y_ref, vjp_ref = jax.vjp(ref, *args)
  y, vjp = jax.jit(lambda *a: jax.vjp(fn, *a))(*args)
  assert y.dtype == y_ref.dtype
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
  g = jax.random.normal(key, y.shape, y.dtype)
  tol = 1e-5 if y.dtype == jnp.float32 else 2e-2
  for got, want in zip(vjp(g), vjp_ref(g)):
    assert got.shape == want.shape and got.dtype == want.dtype
    assert _rel_err(got.astype(jnp.float32), want.astype(jnp.float32)) <= tol


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_pointwise_matmul_equals_autodiff(dtype):
  kx, kw, kg = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(kx, (3, 7, 5, 6), dtype)
  w = jax.random.normal(kw, (6, 4), dtype)
  _assert_equal_vjps(pointwise_matmul, lambda x, w: jnp.einsum('nhwc,cd->nhwd', x, w),
                     (x, w), kg)


def test_opaque_copies_do_not_depend_on_their_predicate():
  # The conditional that hides the transposing copies from fusion is predicated on the first
  # element being finite; a NaN there takes the other branch, which must give the same result.
  x = jax.random.normal(jax.random.key(2), (2, 5, 5, 3)).at[0, 0, 0, 0].set(jnp.nan)
  w = jax.random.normal(jax.random.key(3), (3, 3, 3, 2))
  g = jax.random.normal(jax.random.key(4), (2, 5, 5, 2)).at[0, 0, 0, 0].set(jnp.nan)
  pad = ((1, 1), (1, 1))
  ref = jax.vjp(lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), pad, dimension_numbers=('NHWC', 'HWIO', 'NHWC')), x, w)[1](g)
  got = jax.jit(lambda x, w, g: jax.vjp(
    lambda x, w: conv_canonical_grads(x, w, pad), x, w)[1](g))(x, w, g)
  for a, b in zip(got, ref):
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
  got = jax.jit(lambda x, w, g: jax.vjp(pointwise_matmul, x, w[0, 0])[1](g))(x, w, g)
  ref = jax.vjp(lambda x, w: jnp.einsum('nhwc,cd->nhwd', x, w), x, w[0, 0])[1](g)
  for a, b in zip(got, ref):
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(np.nan_to_num(a), np.nan_to_num(b), rtol=1e-5, atol=1e-5)


def test_cpu_lowering_keeps_strided_grouped_and_biased_convolutions_on_xla():
  # Only stride-1, ungrouped, bias-free convolutions take the canonical-gradient path; the rest
  # must still compute exactly what nn.Conv computes.
  from resnet_jax.models.layers import Conv
  x = jax.random.normal(jax.random.key(1), (2, 9, 9, 4))
  for kw in (dict(strides=2), dict(feature_group_count=2), dict(use_bias=True)):
    ref = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), **kw)
    ours = Conv(4, (3, 3), padding=((1, 1), (1, 1)), impl='cpu', **kw)
    v = ref.init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, v, ours.init(jax.random.key(0), x))
    np.testing.assert_array_equal(ours.apply(v, x), ref.apply(v, x))


def test_max_pool_equals_reduce_window_values_and_gradients():
  def pool(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

  for shape in [(2, 112, 112, 4), (2, 7, 9, 3), (1, 1, 1, 2)]:
    x = jax.random.normal(jax.random.key(0), shape)
    np.testing.assert_array_equal(max_pool_3x3_s2(x), pool(x))
    g_ref = jax.grad(lambda x: jnp.sum(pool(x) ** 2))(x)
    g = jax.grad(lambda x: jnp.sum(max_pool_3x3_s2(x) ** 2))(x)
    np.testing.assert_array_equal(g, g_ref)
    g_jit = jax.jit(jax.grad(lambda x: jnp.sum(max_pool_3x3_s2(x) ** 2)))(x)
    np.testing.assert_array_equal(g_jit, g_ref)


def test_max_pool_tied_to_a_parameter_stores_the_positions_with_the_same_gradients():
  # With `tie` the forward pass runs behind a conditional, so the int8 first-maximum positions
  # are a stored array the backward pass reads, not a comparison chain XLA:CPU fuses into it
  # (and repeats for each of the nine windows of an input pixel); the numbers do not change.
  def loss(x, scale, tie):
    return jnp.sum(max_pool_3x3_s2(jax.nn.relu(x * scale), tie) ** 2)

  x = jnp.round(jax.random.normal(jax.random.key(0), (2, 16, 15, 4)) * 2)  # Many ties.
  scale, kernel = jnp.full(4, 1.5), jnp.ones((7, 7, 3, 4))
  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  plain, tied = (grad.lower(x, scale, tie).compile() for tie in (None, kernel))
  for got, want in zip(tied(x, scale, kernel), plain(x, scale, None)):
    np.testing.assert_array_equal(got, want)
  stored = [line for line in tied.as_text().splitlines()
            if 'conditional(' in line and 's8[2,8,8,4]' in line.split('conditional(')[0]]
  assert len(stored) == 1, 'the positions should be one output of one conditional'
  assert 'conditional(' not in plain.as_text()


def test_only_the_cpu_lowering_stores_the_pool_positions_behind_a_conditional():
  # A conditional's predicate is read by the host on GPU (a sync per step): the XLA lowering,
  # GPU/TPU's default, keeps the plain pool; the CPU lowering ties it to the stem kernel.
  x = jnp.zeros((2, 32, 32, 3))
  for impl, conditionals in (('xla', 0), ('cpu', 1)):
    model = create_model('resnet_tiny', stem='imagenet', conv_impl=impl)
    lines = _gradient_hlo(model, x).splitlines()
    assert sum('conditional(' in line and 's8[' in line for line in lines) == conditionals


def test_max_pool_gradient_goes_to_the_first_maximum_as_torch_does():
  # Ties: every window of a constant map ties; torch gives each output's gradient to the first
  # position of its window (row-major). Plain autodiff would split it between the tied inputs.
  x = jnp.zeros((1, 4, 5, 1)).at[0, 3, 4, 0].set(jnp.nan)
  g = jax.grad(lambda x: jnp.sum(max_pool_3x3_s2(x) * jnp.arange(1.0, 7.0).reshape(1, 2, 3, 1)))(x)
  # What torch 2.14's max_pool2d(3, 2, 1) backward gives for this input and output gradient:
  # outputs (0, 0..2) and (1, 0..1) each send theirs to their window's first pixel; output
  # (1, 2)'s window holds the NaN at (3, 4), which wins.
  want = np.zeros((4, 5))
  want[0, 0], want[0, 1], want[0, 3], want[1, 0], want[1, 1], want[3, 4] = 1, 2, 3, 4, 5, 6
  np.testing.assert_array_equal(g[0, :, :, 0], want)
  assert np.isnan(max_pool_3x3_s2(x)[0, 1, 2, 0])


def test_auto_resolves_per_platform(monkeypatch):
  assert resolve_conv_impl('auto') == ('cpu' if jax.default_backend() == 'cpu' else 'xla')
  with pytest.raises(ValueError, match='conv_impl'):
    resolve_conv_impl('cudnn')
  # oneDNN's kernels are CPU code: a CPU recipe's 'onednn' runs XLA's convolutions on a GPU.
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert resolve_conv_impl('onednn') == 'xla' and resolve_conv_impl('cpu') == 'cpu'


def test_scanned_blocks_equal_unrolled_and_convert_both_ways():
  from resnet_jax.models import scan

  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  fields = dict(stage_sizes=(1, 3, 4), stage_widths=(8, 16, 32), stem_width=8,
                zero_init_residual=False)
  unrolled = create_model('cifar_resnet20', **fields)
  scanned = create_model('cifar_resnet20', scan_blocks=True, **fields)
  v = unrolled.init(jax.random.key(0), x)
  vs = scan.stack(v, fields['stage_sizes'])
  assert vs['params']['layer3_rest']['conv1']['kernel'].shape == (3, 3, 3, 32, 32)
  assert 'layer1_rest' not in vs['params']  # one block: nothing to scan
  # Same tree as the scanned model's own init, and back to the unrolled one exactly.
  assert jax.tree.structure(vs) == jax.tree.structure(scanned.init(jax.random.key(0), x))
  jax.tree.map(np.testing.assert_array_equal, scan.unroll(vs), v)
  y, upd = unrolled.apply(v, x, train=True, mutable=['batch_stats'])
  ys, upds = scanned.apply(vs, x, train=True, mutable=['batch_stats'])
  assert _rel_err(ys, y) <= 1e-5
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               scan.unroll(upds)['batch_stats'], upd['batch_stats'])

  # Gradients through the scanned stages (the loop body's convolutions use the canonical
  # gradient path on CPU) equal the unrolled model's.
  def grads(model, variables):
    def loss(p):
      out, _ = model.apply({**variables, 'params': p}, x, train=True, mutable=['batch_stats'])
      return jnp.sum(out**2)
    return jax.grad(loss)(variables['params'])

  errs = jax.tree.map(_rel_err, scan.unroll({'params': grads(scanned, vs)})['params'],
                      grads(unrolled, v))
  assert max(jax.tree.leaves(errs)) <= 1e-5, errs


# imagenet: the max pool is rematted; with bottleneck blocks the whole stem, and (unless
# remat_chain_stages=0, or pre-activation) its stages as chains (remat_chain).
@pytest.mark.parametrize('stem,block,preact,chain', [
  ('cifar', 'basic', False, True), ('imagenet', 'basic', False, True),
  ('imagenet', 'bottleneck', False, True), ('imagenet', 'bottleneck', False, False),
  ('deep', 'bottleneck', False, True), ('imagenet', 'bottleneck', True, True)])
def test_remat_computes_the_same_values_gradients_and_statistics(stem, block, preact, chain):
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  # Three blocks in the first stage: its last block's input is recomputed through two tails.
  fields = dict(zero_init_residual=False, stem=stem, block=block, preact=preact,
                stage_sizes=(3, 1))
  base = create_model('resnet_tiny', **fields)
  remat = create_model('resnet_tiny', remat=True, remat_chain_stages=2 if chain else 0,
                       **fields)
  assert remat._remat_stem(train=True) == (block == 'bottleneck')
  v = base.init(jax.random.key(0), x)
  jax.tree.map(np.testing.assert_array_equal, remat.init(jax.random.key(0), x), v)

  def grads(model):
    def loss(p):
      out, upd = model.apply({**v, 'params': p}, x, train=True, mutable=['batch_stats'])
      return jnp.sum(out**2), upd
    return jax.grad(loss, has_aux=True)(v['params'])

  (g_remat, upd_remat), (g_base, upd_base) = grads(remat), grads(base)
  errs = jax.tree.map(_rel_err, g_remat, g_base)
  assert max(jax.tree.leaves(errs)) <= 1e-6
  jax.tree.map(np.testing.assert_array_equal, upd_remat, upd_base)


def _compiled_gradient(model, x):
  """The compiled gradient of a train-mode loss (not run; tests/fast_compile.py)."""
  v = jax.eval_shape(model.init, jax.random.key(0), x)

  def loss(p, batch_stats):
    out, _ = model.apply({'params': p, 'batch_stats': batch_stats}, x, train=True,
                         mutable=['batch_stats'])
    return jnp.sum(out**2)
  return fast_compile.jit(jax.grad(loss)).lower(v['params'], v['batch_stats']).compile()


def _gradient_temp_bytes(model, x) -> int:
  """Temporary memory XLA plans for the gradient of a train-mode loss (compiled, not run)."""
  return _compiled_gradient(model, x).memory_analysis().temp_size_in_bytes


def _gradient_hlo(model, x) -> str:
  return _compiled_gradient(model, x).as_text()


def test_remat_lowers_the_compiled_peak_memory():
  # What remat is for, checked on the compiled program (no timing): nn.remat alone used MORE
  # memory on XLA:CPU (recomputation merged with the forward, or scheduled early). A tiny
  # network's peak is mostly its stem, which basic-block networks do not recompute, so the
  # blocks get most of the width here: 3.35 vs 4.10 MB planned (-18%).
  x = jnp.zeros((8, 64, 64, 3))
  fields = dict(stage_sizes=(4, 4), stage_widths=(32, 64), stem_width=16, stem='imagenet')
  remat, plain = (_gradient_temp_bytes(create_model('resnet_tiny', remat=r, **fields), x)
                  for r in (True, False))
  assert remat < 0.87 * plain


def test_remat_of_a_bottleneck_net_recomputes_its_stem_for_less_memory(monkeypatch):
  # The trainer's one-device step for a narrow one-block-per-stage ResNet-50 at 64 px (12.3 vs
  # 14.4 MB; ResNet-50 b16 at 224 px: 0.688 -> 0.635 GB); planned memory, no timing.
  from resnet_jax.models import resnet

  def temp_bytes():
    compiled, _ = compiled_train_step(1, 'resnet50', batch=8, size=64, num_classes=10,
                                      stage_sizes=(1, 1, 1, 1),
                                      stage_widths=(32, 64, 128, 256), remat=True)
    return compiled.memory_analysis().temp_size_in_bytes

  whole_stem = temp_bytes()
  monkeypatch.setattr(resnet.ResNet, '_remat_stem', lambda self, train: False)
  pool_only = temp_bytes()
  assert whole_stem < 0.95 * pool_only, (whole_stem, pool_only)


def test_remat_stores_a_projection_blocks_output_as_one_array(monkeypatch):
  # A block with a projection shortcut ends in relu(bn(conv3) + bn(projection)). Unless its
  # output is materialised, XLA:CPU fuses that into the consumers and keeps both wide operands
  # from the forward pass to the block's backward (ResNet-50 b16: its peak 840 -> 787 MB).
  from resnet_jax.models import remat
  x = jnp.zeros((8, 32, 32, 3))
  fields = dict(block='bottleneck', stage_sizes=(2, 2), stage_widths=(16, 32), stem_width=16,
                stem='cifar', remat=True)
  model = create_model('resnet_tiny', remat_chain_stages=0, **fields)
  materialised = _gradient_temp_bytes(model, x)
  monkeypatch.setattr(remat, 'stored', lambda y, tie: y)
  assert materialised < 0.95 * _gradient_temp_bytes(model, x)


def test_bottleneck_tail_recomputes_the_output_from_the_narrow_tensor():
  # What remat_chain relies on: Bottleneck(x, narrow) is the block's output, bit for bit.
  from resnet_jax.models.blocks import Bottleneck
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 16))
  block = Bottleneck(planes=4, strides=2, conv=nn.Conv, norm=functools.partial(
    nn.BatchNorm, use_running_average=False), zero_init_last=False)
  v = block.init(jax.random.key(0), x)
  (y, narrow), _ = block.apply(v, x, return_narrow=True, mutable=['batch_stats'])
  assert narrow.shape == (2, 4, 4, 4) and y.shape == (2, 4, 4, 16)
  np.testing.assert_array_equal(block.apply(v, x, narrow, mutable=['batch_stats'])[0], y)


def test_remat_chains_keep_less_than_every_block_input():
  # The trainer's one-device step for a bottleneck net with 3-block stages: keeping the first
  # stage's input and its blocks' narrow (1/4-width) tensors instead of every block's input
  # lowers the planned peak: 7.62 vs 8.55 MB here (ResNet-50 b16 at 224 px: 0.635 -> 0.566 GB);
  # planned memory, no timing.
  def temp_bytes(chain_stages):
    compiled, _ = compiled_train_step(1, 'resnet50', batch=8, size=64, num_classes=10,
                                      stage_sizes=(3, 3), stage_widths=(32, 64), stem_width=16,
                                      remat=True, remat_chain_stages=chain_stages)
    return compiled.memory_analysis().temp_size_in_bytes

  chains, inputs = temp_bytes(1), temp_bytes(0)
  assert chains < 0.93 * inputs, (chains, inputs)


def _widest_fusion(hlo_text: str) -> int:
  """The most operands any fusion of a compiled program reads."""
  widths = [len(re.findall(r'%[\w.\-]+', line.split(' fusion(', 1)[1].split('), kind=', 1)[0]))
            for line in hlo_text.splitlines() if ' fusion(' in line and '), kind=' in line]
  return max(widths)


def test_stored_block_outputs_keep_values_and_end_chained_fusions():
  # A stage of identical blocks: unless outputs are stored, XLA:CPU fuses the chain of
  # residual additions into every consumer, so the widest fusion grows with the depth.
  x = jax.random.normal(jax.random.key(1), (4, 12, 12, 3))
  fields = dict(stage_sizes=(10,), stage_widths=(8,), stem='cifar', stem_width=8,
                conv_impl='cpu', zero_init_residual=False)
  models = {k: create_model('resnet_tiny', store_every=k, **fields) for k in (0, 1, 4)}
  v = models[0].init(jax.random.key(0), x)

  def loss(model, params):
    out, upd = model.apply({**v, 'params': params}, x, train=True, mutable=['batch_stats'])
    return jnp.sum(out**2), upd

  grads = {k: jax.grad(functools.partial(loss, m), has_aux=True)(v['params'])
           for k, m in models.items()}
  for k in (1, 4):
    assert max(jax.tree.leaves(jax.tree.map(_rel_err, grads[k][0], grads[0][0]))) <= 1e-6
    jax.tree.map(np.testing.assert_array_equal, grads[k][1], grads[0][1])
  widest = {k: _widest_fusion(fast_compile.jit(jax.grad(functools.partial(loss, m), has_aux=True))
                              .lower(v['params']).compile().as_text())
            for k, m in models.items()}
  assert widest[1] < widest[4] < widest[0], widest


def test_outputs_are_stored_only_in_long_residual_chains():
  def stored_blocks(name, **fields):
    return create_model(name, conv_impl='cpu', **fields)._stored_blocks()
  assert stored_blocks('resnet50') == set()  # Chains of 3, 4, 6, 3 blocks.
  assert stored_blocks('resnet152') == {f'layer3_{j}' for j in range(1, 36, 2)}
  assert stored_blocks('cifar_resnet20') == {  # 'pad' shortcuts: one chain of 9 blocks.
    'layer1_1', 'layer2_0', 'layer2_2', 'layer3_1'}
  assert stored_blocks('resnet152', store_every=0) == set()
  assert stored_blocks('cifar_plain56') == set()  # No shortcuts, no chain.
  assert create_model('resnet152', conv_impl='xla')._stored_blocks() == set()
  with pytest.raises(ValueError, match='store_every=-2'):
    create_model('resnet_tiny', store_every=-2).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


def _all_reduced_elements(hlo_text: str) -> int:
  """Elements all-reduced by a compiled program, however XLA combined them into ops."""
  total = 0
  for line in hlo_text.splitlines():
    lhs, sep, rhs = line.partition(' = ')
    if sep and re.match(r'\(?[a-z0-9]+\[', rhs) and re.search(r'\ball-reduce(-start)?\(', rhs):
      result_type = rhs[:re.search(r'\ball-reduce', rhs).start()]
      for dims in re.findall(r'[a-z0-9]+\[([0-9,]*)\]', result_type):
        total += int(np.prod([int(d) for d in dims.split(',') if d]))
  return total


def test_cpu_lowering_and_remat_add_no_communication_on_a_mesh():
  # The conditional's predicate and remat's untying read per-device values: reading a scalar
  # of a batch-sharded array took an all-reduce per convolution (or block), which XLA merged
  # with later gradient all-reduces, delaying the work with its operands live (+31% memory).
  def all_reduced(**fields):
    compiled, state = compiled_train_step(2, stem='imagenet', **fields)
    return _all_reduced_elements(compiled.as_text()), state.batch_stats

  plain, batch_stats = all_reduced(conv_impl='xla')
  assert plain > 0  # The gradients and BatchNorm statistics themselves.
  assert all_reduced(conv_impl='cpu')[0] == plain
  # Recomputing a block's forward recomputes its (cross-device) BatchNorm statistics: that
  # much more, and nothing else.
  recomputed_statistics = sum(x.size for name, stats in batch_stats.items()
                              if name.startswith('layer') for x in jax.tree.leaves(stats))
  assert all_reduced(conv_impl='cpu', remat=True)[0] == plain + recomputed_statistics


def _copied_kernels(hlo_text: str) -> int:
  """Convolution kernels (4-D entry parameters, donated) that a compiled program copies."""
  entry = hlo_text[hlo_text.index('ENTRY'):]
  kernels = set(re.findall(r'(%[\w.\-]+) = f32\[\d+,\d+,\d+,\d+\]\S* parameter\(', entry))
  return sum(m.group(1) in kernels for m in re.finditer(r'= \S+ copy\((%[\w.\-]+)\)', entry))


def test_kernels_update_in_place_once_their_input_gradient_has_read_them(monkeypatch):
  # A donated kernel read by its input gradient, which no path ordered before the kernel's
  # update, was copied at the start of every one-device step (ResNet-50: 102 MB).
  from resnet_jax.models import layers
  fields = dict(stage_sizes=(2, 2), stem='cifar', conv_impl='cpu')
  tied = _copied_kernels(compiled_train_step(1, **fields)[0].as_text())
  monkeypatch.setattr(layers, '_after', lambda x, grad_x: x)
  untied = _copied_kernels(compiled_train_step(1, **fields)[0].as_text())
  # Eight of the nine kernels go through the cpu lowering's VJPs (stem, six stride-1 3x3s, the
  # 1x1 projection); the strided 3x3 keeps XLA's own gradient, and its copy.
  assert tied <= 1 and untied >= 8, (tied, untied)



def test_remat_in_a_long_chain_ends_each_blocks_backward_before_the_next(monkeypatch):
  # In a residual chain longer than 16 blocks, each block's input gradient reads its parameter
  # gradients (remat_call_in_order): XLA:CPU had deferred the kernel gradients of block after
  # block, with their recomputed activations alive (ResNet-152 b8: 1.67 -> 0.94 GB planned).
  # Values and gradients stay those of the plain network.
  from resnet_jax.models import resnet
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  fields = dict(stage_sizes=(20,), stage_widths=(8,), stem='cifar', stem_width=8,
                zero_init_residual=False)
  base = create_model('resnet_tiny', **fields)
  remat = create_model('resnet_tiny', remat=True, **fields)
  assert len(remat._remat_in_order_blocks()) == 20
  assert not create_model('cifar_resnet20', remat=True)._remat_in_order_blocks()
  v = base.init(jax.random.key(0), x)

  def grads(model):
    def loss(p):
      out, _ = model.apply({**v, 'params': p}, x, train=True, mutable=['batch_stats'])
      return jnp.sum(out**2)
    return jax.grad(loss)(v['params'])

  errs = jax.tree.map(_rel_err, grads(remat), grads(base))
  assert max(jax.tree.leaves(errs)) <= 1e-6, errs

  # The trainer's step on 2 devices, planned memory (no timing): 7.4 vs 22.8 MB.
  def temp_bytes():
    compiled, _ = compiled_train_step(2, 'resnet_tiny', batch=32, size=16, remat=True,
                                      stage_sizes=(20,), stage_widths=(16,), stem_width=16)
    return compiled.memory_analysis().temp_size_in_bytes

  in_order = temp_bytes()
  monkeypatch.setattr(resnet.ResNet, '_remat_in_order_blocks', lambda self: set())
  untied = temp_bytes()
  assert in_order < 0.5 * untied, (in_order, untied)


def test_remat_chain_adds_only_its_tails_statistics_to_the_communication():
  # remat_chain's untying reads per-example values too: beyond per-block remat, the only
  # all-reduces it adds are the global BatchNorm statistics its tails recompute (block k's
  # backward runs the tails of blocks 0..k-1: bn3, and the projection's BN for block 0).
  def all_reduced(chain_stages):
    compiled, state = compiled_train_step(2, stem='imagenet', block='bottleneck',
                                          stage_sizes=(3, 1), stage_widths=(8, 16),
                                          remat=True, remat_chain_stages=chain_stages)
    return _all_reduced_elements(compiled.as_text()), state.batch_stats

  per_block, batch_stats = all_reduced(0)
  chained, _ = all_reduced(1)

  def tail_statistics(block):
    stats = batch_stats[f'layer1_{block}']
    return sum(x.size for name in ('bn3', 'downsample_bn') if name in stats
               for x in jax.tree.leaves(stats[name]))

  assert chained == per_block + sum((3 - 1 - j) * tail_statistics(j) for j in range(3))
