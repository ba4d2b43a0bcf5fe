"""conv_impl='onednn': oneDNN's convolutions (XLA FFI) equal XLA's, on one device and a mesh."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import parallel
from resnet_jax.kernels import onednn
from resnet_jax.models import create_model, onednn_conv
from resnet_jax.models.layers import Conv

needs_onednn = pytest.mark.skipif(
  not onednn_conv.available(), reason=f'oneDNN handlers unavailable: {onednn.status()[1]}')
# bf16 on oneDNN only where the CPU has bf16 dot products (avx512_bf16, AMX); elsewhere bf16
# stays on XLA (tested below with the check faked).
NATIVE_BF16 = onednn_conv.available(jnp.bfloat16)
needs_native_bf16 = pytest.mark.skipif(not NATIVE_BF16, reason='no native bf16 in oneDNN here')


def _rel_err(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))


def _xla_conv(x, w, strides, padding):
  return jax.lax.conv_general_dilated(x, w, strides, padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@needs_onednn
@pytest.mark.parametrize('threads', [1, 2, 3])  # 2, 3: the batch split over XLA's threads
@pytest.mark.parametrize('x_shape, kernel, strides, padding', [
  ((3, 11, 9, 5), (3, 3), (1, 1), ((1, 1), (1, 1))),
  ((2, 12, 12, 8), (3, 3), (2, 2), ((1, 1), (1, 1))),
  ((2, 17, 17, 3), (7, 7), (2, 2), ((3, 3), (3, 3))),  # an ImageNet stem on odd sizes
  ((3, 11, 9, 5), (5, 3), (1, 2), ((2, 1), (0, 2))),  # asymmetric padding and strides
])
def test_values_and_gradients_equal_xla_convolution(x_shape, kernel, strides, padding, threads):
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, x_shape)
  w = jax.random.normal(kw, (*kernel, x_shape[-1], 4))

  def ours(x, w):
    return onednn_conv.conv(x, w, strides, padding, threads)

  y_ref, vjp_ref = jax.vjp(lambda x, w: _xla_conv(x, w, strides, padding), x, w)
  y, vjp = jax.jit(lambda x, w: jax.vjp(ours, x, w))(x, w)
  assert y.shape == y_ref.shape and _rel_err(y, y_ref) <= 1e-5
  g = jax.random.normal(kg, y.shape)
  for got, want in zip(jax.jit(vjp)(g), vjp_ref(g)):
    assert got.shape == want.shape and _rel_err(got, want) <= 1e-5


@needs_onednn
@pytest.mark.parametrize('batch, threads', [(5, 4), (3, 2), (1, 2)])
def test_uneven_batch_slices_equal_xla_convolution(batch, threads):
  # Slices of 2, 2, 1 (and 2, 1): the shorter slice's primitive is another one, whose kernel
  # layout oneDNN may choose differently (wider channels make blocked layouts likely); a batch
  # of 1 runs whole on an OpenMP team.
  kx, kw, kg = jax.random.split(jax.random.key(5), 3)
  x = jax.random.normal(kx, (batch, 9, 9, 32))
  w = jax.random.normal(kw, (3, 3, 32, 48))
  pad = ((1, 1), (1, 1))
  y_ref, vjp_ref = jax.vjp(lambda x, w: _xla_conv(x, w, (1, 1), pad), x, w)
  y, vjp = jax.jit(lambda x, w: jax.vjp(
    lambda x, w: onednn_conv.conv(x, w, (1, 1), pad, threads), x, w))(x, w)
  assert _rel_err(y, y_ref) <= 1e-5
  g = jax.random.normal(kg, y.shape)
  for got, want in zip(jax.jit(vjp)(g), vjp_ref(g)):
    assert _rel_err(got, want) <= 1e-5


def _bf16(a):
  return a.astype(jnp.bfloat16)


def _f32(a):
  return a.astype(jnp.float32)


@needs_native_bf16
@pytest.mark.parametrize('threads', [1, 3])
@pytest.mark.parametrize('kernel, strides, padding', [
  ((3, 3), (1, 1), ((1, 1), (1, 1))), ((3, 3), (2, 2), ((1, 1), (1, 1))),
  ((1, 1), (1, 1), ((0, 0), (0, 0))),
])
def test_bfloat16_values_and_gradients_are_float32_sums_of_the_rounded_operands(
    kernel, strides, padding, threads):
  # oneDNN's bf16 kernels accumulate in float32: the output and input gradient are the float32
  # convolution of the bf16-rounded operands, rounded once to bf16 (relative error <= 2^-8 of
  # the largest); the kernel gradient is returned in float32, unrounded.
  kx, kw, kg = jax.random.split(jax.random.key(6), 3)
  x = _bf16(jax.random.normal(kx, (5, 10, 10, 16)))
  w = jax.random.normal(kw, (*kernel, 16, 24))  # the float32 parameter
  g = _bf16(jax.random.normal(kg, output_shape := onednn_conv.output_shape(
    x.shape, w.shape, strides, padding)))
  y, vjp = jax.jit(lambda x, w: jax.vjp(
    lambda x, w: onednn_conv.conv(x, w, strides, padding, threads), x, w))(x, w)
  grad_x, grad_w = jax.jit(vjp)(g)
  y_ref, vjp_ref = jax.vjp(lambda x, w: _xla_conv(x, w, strides, padding), _f32(x),
                           _f32(_bf16(w)))
  grad_x_ref, grad_w_ref = vjp_ref(_f32(g))
  assert (y.dtype, grad_x.dtype, grad_w.dtype) == (jnp.bfloat16, jnp.bfloat16, jnp.float32)
  assert y.shape == output_shape and _rel_err(_f32(y), y_ref) <= 2.0 ** -8
  assert _rel_err(_f32(grad_x), grad_x_ref) <= 2.0 ** -8
  assert _rel_err(grad_w, grad_w_ref) <= 1e-5
  if kernel == (1, 1):  # the same through `pointwise` (matmuls, oneDNN's kernel gradient)
    y_p, vjp_p = jax.jit(lambda x, w: jax.vjp(
      lambda x, w: onednn_conv.pointwise(x, w, threads), x, w))(x, w[0, 0])
    grad_x_p, grad_w_p = jax.jit(vjp_p)(g)
    assert (y_p.dtype, grad_x_p.dtype, grad_w_p.dtype) == (y.dtype, grad_x.dtype, grad_w.dtype)
    assert _rel_err(_f32(y_p), y_ref) <= 2.0 ** -8
    assert _rel_err(_f32(grad_x_p), grad_x_ref) <= 2.0 ** -8
    assert _rel_err(grad_w_p, grad_w_ref[0, 0]) <= 1e-5


@needs_onednn
def test_operands_of_another_dtype_are_refused_with_a_clear_error():
  x, w = jnp.ones((2, 6, 6, 3), jnp.float16), jnp.ones((3, 3, 3, 2), jnp.float16)
  with pytest.raises(Exception, match='float32 or bfloat16'):
    jax.block_until_ready(onednn_conv.conv(x, w, (1, 1), ((1, 1), (1, 1)), 1))


@needs_onednn
def test_non_finite_values_propagate_as_in_xla():
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 3)).at[0, 2, 2, 1].set(jnp.nan)
  w = jax.random.normal(jax.random.key(2), (3, 3, 3, 2))
  pad = ((1, 1), (1, 1))
  y = jax.jit(lambda x, w: onednn_conv.conv(x, w, (1, 1), pad, 1))(x, w)
  np.testing.assert_array_equal(np.isnan(y), np.isnan(_xla_conv(x, w, (1, 1), pad)))


def _custom_calls(fn, *args) -> set[str]:
  text = jax.jit(fn).lower(*args).as_text()
  return {name for name, target in onednn.TARGETS.items() if target in text}


def _value_and_grads(module, v, x):
  return jax.value_and_grad(lambda v, x: jnp.sum(
    jnp.asarray(module.apply(v, x), jnp.float32) ** 2), argnums=(0, 1))(v, x)


@needs_onednn
def test_the_layer_routes_float32_and_bfloat16_convolutions_to_onednn_and_nothing_else():
  x = jax.random.normal(jax.random.key(4), (2, 8, 8, 4))
  kxk = {'forward', 'backward_data', 'backward_weights'}
  cases = {  # Conv fields -> the oneDNN calls of its value and gradients
    'kxk': (dict(features=4, kernel_size=(3, 3), padding=((1, 1), (1, 1)), use_bias=False), kxk),
    'strided': (dict(features=4, kernel_size=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                     use_bias=False), kxk),
    # A matmul; its kernel gradient, which XLA computes from a transposed copy, on oneDNN.
    'pointwise': (dict(features=4, kernel_size=(1, 1), use_bias=False), {'backward_weights'}),
    'strided pointwise': (dict(features=4, kernel_size=(1, 1), strides=(2, 2), use_bias=False),
                          {'backward_weights'}),
    'grouped': (dict(features=4, kernel_size=(3, 3), padding=((1, 1), (1, 1)),
                     feature_group_count=2, use_bias=False), set()),
    'biased': (dict(features=4, kernel_size=(3, 3), padding=((1, 1), (1, 1))), set()),
    'biased pointwise': (dict(features=4, kernel_size=(1, 1)), {'backward_weights'}),
    'bfloat16': (dict(features=4, kernel_size=(3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                      dtype=jnp.bfloat16), kxk if NATIVE_BF16 else set()),
    # In bf16 all three on oneDNN (a bf16 matmul needs a float32 result and a rounding pass).
    'bfloat16 pointwise': (dict(features=4, kernel_size=(1, 1), use_bias=False,
                                dtype=jnp.bfloat16), kxk if NATIVE_BF16 else set()),
    'bfloat16 strided pointwise': (dict(features=4, kernel_size=(1, 1), strides=(2, 2),
                                        use_bias=False, dtype=jnp.bfloat16),
                                   kxk if NATIVE_BF16 else set()),
    'bfloat16 biased pointwise': (dict(features=4, kernel_size=(1, 1), dtype=jnp.bfloat16),
                                  kxk if NATIVE_BF16 else set()),
    'float16': (dict(features=4, kernel_size=(3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                     dtype=jnp.float16), set()),
  }
  for name, (fields, calls) in cases.items():
    layer, ref = Conv(impl='onednn', **fields), Conv(impl='cpu', **fields)
    v = layer.init(jax.random.key(0), x)
    assert _custom_calls(functools.partial(_value_and_grads, layer), v, x) == calls, name
    # Half precision: the cpu lowering rounds the kernel gradient to the compute dtype, oneDNN
    # does not, and the two sum in other orders before rounding their outputs.
    tol = 1e-5 if fields.get('dtype') is None else 2e-2
    got, want = _value_and_grads(layer, v, x), _value_and_grads(ref, v, x)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert _rel_err(g, w) <= tol, name


def _loss_and_grads(model, variables, x):
  def loss(params):
    y, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                       train=True, mutable=['batch_stats'])
    return jnp.sum(y ** 2)

  return jax.value_and_grad(loss)(variables['params'])


@needs_onednn
def test_a_train_step_on_a_mesh_splits_the_calls_and_equals_the_cpu_lowering():
  # conftest's 8 virtual devices; the batch split 8 ways, each device's calls on its shard.
  mesh = parallel.create_mesh()
  assert mesh.size == 8
  x = jax.random.normal(jax.random.key(3), (8, 16, 16, 3))
  ref = create_model('resnet18', num_classes=10, conv_impl='cpu')
  ours = create_model('resnet18', num_classes=10, conv_impl='onednn')
  variables = jax.jit(ref.init)(jax.random.key(0), x)
  loss_ref, grads_ref = jax.jit(lambda v, x: _loss_and_grads(ref, v, x))(variables, x)
  fn = jax.jit(parallel.with_abstract_mesh(lambda v, x: _loss_and_grads(ours, v, x), mesh),
               in_shardings=(parallel.replicated(mesh), parallel.data_sharding(mesh)))
  x_sharded = jax.device_put(x, parallel.data_sharding(mesh))
  loss, grads = fn(variables, x_sharded)
  assert _rel_err(loss, loss_ref) <= 1e-5
  errs = jax.tree.map(_rel_err, grads, grads_ref)
  assert max(jax.tree.leaves(errs)) <= 1e-4, errs
  hlo = fn.lower(variables, x_sharded).compile().as_text()
  assert 'all-gather' not in hlo  # the partitioner did not gather the calls' operands
  assert onednn.TARGETS['backward_weights'] in hlo


@needs_native_bf16
def test_auto_puts_bfloat16_convolutions_on_onednn_and_float32_ones_on_cpu():
  # XLA:CPU has no bf16 convolution kernels (bf16 ran at ~float32's speed); oneDNN's do.
  fields = dict(features=4, kernel_size=(3, 3), padding=((1, 1), (1, 1)), use_bias=False)
  x = jax.random.normal(jax.random.key(7), (2, 8, 8, 4))
  for dtype, calls in ((jnp.bfloat16, {'forward', 'backward_data', 'backward_weights'}),
                       (jnp.float32, set())):
    layer = Conv(impl='auto', dtype=dtype, **fields)
    v = layer.init(jax.random.key(0), x)
    assert _custom_calls(functools.partial(_value_and_grads, layer), v, x) == calls, dtype


@pytest.mark.parametrize('impl, dtype', [('onednn', jnp.float32), ('auto', jnp.bfloat16)])
def test_without_onednn_the_layer_keeps_the_cpu_lowering(monkeypatch, impl, dtype):
  monkeypatch.setattr(onednn_conv, 'available', lambda *dtype: False)
  fields = dict(features=4, kernel_size=(3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                dtype=dtype)
  x = jnp.ones((2, 8, 8, 4))
  layer, ref = Conv(impl=impl, **fields), Conv(impl='cpu', **fields)
  v = layer.init(jax.random.key(0), x)
  assert not _custom_calls(layer.apply, v, x)
  assert not _custom_calls(lambda v, x: jax.grad(lambda v: layer.apply(v, x).sum())(v), v, x)
  np.testing.assert_array_equal(layer.apply(v, x), ref.apply(v, x))


@needs_onednn
def test_without_native_bf16_bfloat16_stays_on_xla_and_the_trainer_says_why(monkeypatch, caplog):
  from resnet_jax import train
  monkeypatch.setattr(onednn, 'native_bf16', lambda: (False, 'oneDNN CPU ISA 0x27 (without '
                                                             'avx512_bf16)'))
  fields = dict(features=4, kernel_size=(3, 3), padding=((1, 1), (1, 1)), use_bias=False)
  x = jnp.ones((2, 8, 8, 4))
  for impl in ('onednn', 'auto'):
    layer = Conv(impl=impl, dtype=jnp.bfloat16, **fields)
    v = layer.init(jax.random.key(0), x)
    assert not _custom_calls(functools.partial(_value_and_grads, layer), v, x), impl
  float32 = Conv(impl='onednn', **fields)  # float32 is unaffected
  assert _custom_calls(float32.apply, float32.init(jax.random.key(0), x), x) == {'forward'}
  with caplog.at_level('INFO'):
    train._log_onednn('onednn', jnp.bfloat16)
  assert [r.getMessage() for r in caplog.records] == [
    'conv_impl=onednn: oneDNN CPU ISA 0x27 (without avx512_bf16): no native bf16 convolutions; '
    'the convolutions run on conv_impl=cpu instead.']


def test_the_handlers_build_wherever_onednn_and_a_compiler_are_installed():
  # Otherwise every test above would skip and a handler that no longer compiles go unseen.
  import shutil
  if onednn.find_onednn() is None or shutil.which('g++') is None:
    pytest.skip('no oneDNN (the `onednn` extra) or no g++ on this host')
  assert onednn.status()[0], onednn.status()[1]


def test_a_missing_onednn_is_reported_with_how_to_install_it(monkeypatch):
  monkeypatch.setattr(onednn, 'find_onednn', lambda: None)
  ok, why = onednn._load.__wrapped__()
  assert not ok and 'pip install -e ".[onednn]"' in why


def test_the_trainer_says_whether_onednn_runs_and_why_not(monkeypatch, caplog):
  from resnet_jax import train
  monkeypatch.setattr(onednn_conv, 'available', lambda *dtype: False)
  monkeypatch.setattr(onednn, 'status', lambda: (False, 'oneDNN not found (...)'))
  with caplog.at_level('INFO'):
    train._log_onednn('onednn', jnp.float32)
    train._log_onednn('cpu', jnp.bfloat16)  # Nothing to say: XLA's asked for.
    train._log_onednn('auto', jnp.float32)  # Nothing to say: float32 stays on cpu.
    train._log_onednn('auto', jnp.bfloat16)
  assert [r.getMessage() for r in caplog.records] == [
    'conv_impl=onednn: oneDNN not found (...); the convolutions run on conv_impl=cpu instead.',
    'conv_impl=auto in bfloat16: oneDNN not found (...); the convolutions run on XLA\'s, which '
    'have no bfloat16 kernels on CPU (about float32\'s speed).']
