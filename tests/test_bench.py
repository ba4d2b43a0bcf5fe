"""`python -m resnet_jax.bench`: each subcommand runs on a tiny case and writes its JSON keys."""

import json

from resnet_jax import bench

TINY = ['--model', 'resnet_tiny', '--batch', '8', '--image-size', '16', '--num-classes', '10',
        '--steps', '2', '--warmup', '1']


def test_train_reports_the_documented_keys_and_variant_ratios(tmp_path):
  path = tmp_path / 'train.json'
  out = bench.main(['train', *TINY, '--variant', 'a:', '--variant', 'b:remat=True',
                    '--json', str(path)])
  assert json.loads(path.read_text()) == json.loads(json.dumps(out))
  assert out['devices'] == 8 and set(out['variants']) == {'a', 'b'}
  for result in out['variants'].values():
    assert result['images_per_sec'] > 0 and result['compile_s'] > 0 and result['step_s'] > 0
    assert result['peak_memory_bytes'] > 0 and result['step_gflops'] > 0
  assert out['speedup_vs_a']['a'] == 1.0


def test_eval_reports_throughput_and_latency():
  out = bench.main(['eval', *TINY])
  assert out['images_per_sec'] > 0 and out['latency_batch1_s'] > 0


def test_input_reports_per_core_rates(tmp_path):
  out = bench.main(['input', '--seconds', '0.2', '--repeat', '2', '--image-size', '32'])
  transform = out['imagenet_train_transform']
  assert transform['images_per_sec_per_core'] > 0
  assert len(transform['rounds_images_per_sec_per_core']) == 2
  assert isinstance(out['fast_resize'], bool) and isinstance(out['jpeg_partial_decode'], bool)
