"""`python -m resnet_jax.bench`: each subcommand runs on a tiny case and writes its JSON keys."""

import json
import os

import pytest

from resnet_jax import bench
from tests import fast_compile

TINY = ['--model', 'resnet_tiny', '--batch', '8', '--image-size', '16', '--num-classes', '10',
        '--steps', '2', '--warmup', '1']


@pytest.fixture
def fast_children(monkeypatch):
  """Child processes (flag, environment and torch comparisons) compile fast: what these tests
  check is how the children are run and reported, not their speed (tests/fast_compile.py)."""
  monkeypatch.setenv('XLA_FLAGS', f"{os.environ.get('XLA_FLAGS', '')} {fast_compile.XLA_FLAG}")


def test_train_reports_the_documented_keys_and_variant_ratios(tmp_path):
  path = tmp_path / 'train.json'
  # A variant's dtype is a name, as --dtype's.
  out = bench.main(['train', *TINY, '--variant', 'a:', '--variant', 'b:remat=True,dtype=bfloat16',
                    '--json', str(path)])
  assert json.loads(path.read_text()) == json.loads(json.dumps(out))
  assert out['devices'] == 8 and set(out['variants']) == {'a', 'b'}
  for result in out['variants'].values():
    assert result['images_per_sec'] > 0 and result['compile_s'] > 0 and result['step_s'] > 0
    assert result['peak_memory_bytes'] > 0 and result['step_gflops'] > 0
    assert result['rounds_images_per_sec'] == [result['images_per_sec']]  # --repeat 1
  assert out['speedup_vs_a']['a'] == 1.0
  assert out['variants']['b']['fields'] == {'remat': True, 'dtype': 'bfloat16'}


def test_eval_reports_throughput_and_latency():
  out = bench.main(['eval', *TINY])
  assert out['images_per_sec'] > 0 and out['latency_batch1_s'] > 0


def test_input_reports_per_core_rates(tmp_path):
  out = bench.main(['input', '--seconds', '0.2', '--repeat', '2', '--image-size', '32'])
  transform = out['imagenet_train_transform']
  assert transform['images_per_sec_per_core'] > 0
  assert len(transform['rounds_images_per_sec_per_core']) == 2
  assert isinstance(out['fast_resize'], bool) and isinstance(out['jpeg_partial_decode'], bool)


def test_xla_variants_run_in_their_own_processes_with_their_flags(tmp_path, fast_children):
  # Two flag sets, one round each, each a child process started with its flags (a device
  # count the parent does not have shows they reached the child's backend).
  out = bench.main(['train', *TINY, '--repeat', '1', '--cpu-devices', '1',
                    '--xla-variant', 'one=',
                    '--xla-variant', 'two=--xla_force_host_platform_device_count=2'])
  one, two = out['xla_variants']['one'], out['xla_variants']['two']
  assert one['xla_flags'] == '' and len(one['rounds_images_per_sec']) == 1
  assert len(two['rounds_images_per_sec']) == 1 and two['images_per_sec'] > 0
  assert one['devices'] == 8 and two['devices'] == 2  # conftest's 8, replaced by the variant's
  assert out['speedup_vs_one']['one'] == 1.0 and out['speedup_vs_one']['two'] > 0


def test_env_variants_run_their_children_with_that_environment(fast_children):
  # glibc's defaults against the tuned malloc: each child records the tunables it ran with (the
  # unchanged variant's child re-executes itself with host_malloc's, as training does).
  from resnet_jax import host_malloc
  out = bench.main(['train', *TINY, '--repeat', '1', '--steps', '1', '--warmup', '0',
                    '--env-variant', 'system:GLIBC_TUNABLES=glibc.malloc.hugetlb=0',
                    '--env-variant', 'tuned:'])
  system, tuned = out['env_variants']['system'], out['env_variants']['tuned']
  assert system['env'] == 'GLIBC_TUNABLES=glibc.malloc.hugetlb=0' and tuned['env'] == ''
  assert system['glibc_tunables'] == 'glibc.malloc.hugetlb=0'
  if host_malloc.has_tunables(host_malloc.glibc_version()):
    assert tuned['glibc_tunables'] == host_malloc.merged('')
  assert out['speedup_vs_system']['system'] == 1.0 and tuned['images_per_sec'] > 0


def test_xla_variant_errors_name_the_argument():
  with pytest.raises(ValueError, match='NAME=FLAGS'):
    bench.main(['train', *TINY, '--xla-variant', 'noequals'])
  with pytest.raises(ValueError, match='cannot be combined'):
    bench.main(['train', *TINY, '--xla-variant', 'a=', '--variant', 'b:'])
  with pytest.raises(ValueError, match='NAME:VAR=VALUE'):
    bench.main(['train', *TINY, '--env-variant', 'nocolon'])
  with pytest.raises(ValueError, match="dtype='float16': expected one of"):
    bench.main(['train', *TINY, '--variant', 'half:dtype=float16'])
  with pytest.raises(ValueError, match='cannot be combined'):
    bench.main(['train', *TINY, '--env-variant', 'a:', '--xla-variant', 'b='])


def test_torch_reference_reports_images_per_sec():
  pytest.importorskip('torchvision')
  out = bench.main(['torch', '--model', 'resnet18', '--batch', '2', '--image-size', '32',
                    '--num-classes', '10', '--steps', '1', '--warmup', '1'])
  assert out['images_per_sec'] > 0 and out['memory_format'] == 'channels_last'
  assert (out['dtype'], out['logits_dtype']) == ('float32', 'float32')
  with pytest.raises(SystemExit, match='not a torchvision.models name'):
    bench.main(['torch', '--model', 'no_such_net'])


def test_vs_torch_alternates_both_frameworks_and_reports_ratios(fast_children):
  pytest.importorskip('torchvision')
  out = bench.main(['vs-torch', '--model', 'resnet18', '--batch', '8', '--image-size', '32',
                    '--num-classes', '10', '--steps', '1', '--warmup', '0', '--repeat', '1'])
  ours = out['jax']['images_per_sec']
  assert ours > 0 and out['jax']['devices'] == 8  # conftest's devices reach the child
  # torch with glibc's defaults (as its users run it) and with our tunables, each a ratio.
  assert out['torch']['glibc_tunables'] == 'glibc.malloc.hugetlb=0'
  assert out['torch']['memory_format'] == 'contiguous'  # auto: NCHW for ResNet-18
  for name in ('torch', 'torch_tuned'):
    assert out[name]['ratio_of_medians'] == pytest.approx(ours / out[name]['images_per_sec'])
    assert len(out[name]['ratio_per_round']) == 1


def test_vs_torch_times_each_of_several_lowerings_against_the_same_torch_runs(fast_children):
  pytest.importorskip('torchvision')
  out = bench.main(['vs-torch', '--model', 'resnet18', '--batch', '8', '--image-size', '32',
                    '--num-classes', '10', '--steps', '1', '--warmup', '0', '--repeat', '1',
                    '--conv-impl', 'cpu', '--conv-impl', 'xla', '--dtype', 'bfloat16'])
  assert 'jax' not in out
  # Both sides in bf16: our half_precision, torch's autocast (which did take effect).
  assert out['dtype'] == out['torch']['dtype'] == 'bfloat16'
  assert out['torch']['logits_dtype'] == 'bfloat16'
  for impl in ('cpu', 'xla'):
    ours = out[f'jax_{impl}']
    assert ours['conv_impl'] == impl and ours['images_per_sec'] > 0
    assert ours['dtype'] == 'bfloat16'
    ratio = out['torch'][f'ratio_of_medians_jax_{impl}']
    assert ratio == pytest.approx(ours['images_per_sec'] / out['torch']['images_per_sec'])


def test_convs_times_each_distinct_convolution_of_the_model_against_torch():
  pytest.importorskip('torch')
  out = bench.main(['convs', '--model', 'resnet_tiny', '--batch', '4', '--image-size', '16',
                    '--num-classes', '10', '--steps', '1', '--warmup', '0'])
  rows = out['convolutions']
  assert out['distinct_convolutions'] == len(rows)
  assert out['calls'] == sum(r['count'] for r in rows)
  stem = [r for r in rows if r['on_image']]  # Its backward: the kernel gradient alone.
  assert len(stem) == 1 and tuple(stem[0]['input']) == (4, 16, 16, 3)
  for r in rows:
    assert r['jax']['forward_ms'] > 0 and r['jax']['backward_ms'] > 0 and r['gflop_forward'] > 0
    assert r['torch']['forward_ms'] > 0 and r['ratio_backward'] > 0
  totals = out['jax_totals']
  assert totals['all']['total_s'] == pytest.approx(
    totals['1x1']['total_s'] + totals['kxk']['total_s'])
  assert set(out['ratio_of_totals']) <= {'1x1', 'kxk', 'all'}
