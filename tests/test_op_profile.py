"""op_profile: HLO parsing, self times, gaps, and `bench profile` on a real trace."""

import json

import pytest

from resnet_jax import bench, op_profile
from resnet_jax.op_profile import Event


def _source(src: str) -> str:
  return f', metadata={{op_name="jit(train_step)/{src}"}}' if src else ''


# A hand-written module in XLA:CPU's printed form: fusions named by what they call.
HLO = '''HloModule jit_train_step, is_scheduled=true

%fused_dot (p0: f32[4,8], p1: f32[8,8]) -> f32[4,8] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %p1 = f32[8,8]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,8]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_sum (p0.1: f32[4,8], c: f32[]) -> (f32[8]{0}, f32[8]{0}) {
  %p0.1 = f32[4,8]{1,0} parameter(0)
  %c = f32[] constant(0)
  %mul.2 = f32[4,8]{1,0} multiply(%p0.1, %p0.1)
  ROOT %reduce.3 = (f32[8]{0}, f32[8]{0}) reduce(%p0.1, %mul.2, %c, %c), dimensions={0}
}

%fused_copy (p0.2: f32[4,8]) -> f32[8,4] {
  %p0.2 = f32[4,8]{1,0} parameter(0)
  ROOT %transpose.4 = f32[8,4]{1,0} transpose(%p0.2), dimensions={1,0}
}

%fused_relu (p0.3: f32[4,8]) -> f32[4,8] {
  %p0.3 = f32[4,8]{1,0} parameter(0)
  %zero = f32[] constant(0)
  %b = f32[4,8]{1,0} broadcast(%zero), dimensions={}
  ROOT %max.5 = f32[4,8]{1,0} maximum(%p0.3, %b)
}

ENTRY %main (x: f32[4,8], w: f32[8,8]) -> f32[8] {
  %x = f32[4,8]{1,0} parameter(0)
  %w = f32[8,8]{1,0} parameter(1)
''' + '\n'.join(f'  {line}{_source(src)}' for line, src in [
  ('%ynn_fusion.7 = f32[4,8]{1,0} fusion(%x, %w), kind=kCustom, calls=%fused_dot',
   'jvp(ResNet)/layer1_0/conv1/dot_general'),
  ('%sums = (f32[8]{0}, f32[8]{0}) fusion(%ynn_fusion.7), kind=kLoop, calls=%fused_sum',
   'transpose(jvp(ResNet))/layer2_3/bn1/reduce_sum'),
  ('%copy_fusion = f32[8,4]{1,0} fusion(%x), kind=kLoop, calls=%fused_copy',
   'transpose(jvp(ResNet))/ResNet._stem/conv1/transpose'),
  ('%relu = f32[4,8]{1,0} fusion(%x), kind=kLoop, calls=%fused_relu',
   'jvp(ResNet)/layer1_0/relu/max'),
  ('%convolution.9 = f32[1,4,4,8]{3,2,1,0} convolution(%a, %k), window={size=3x3 pad=1_1x1_1}, '
   'dim_labels=b01f_01io->b01f', 'transpose(jvp(ResNet))/layer1_0/conv2/conv_general_dilated'),
  ('%all-reduce.10 = f32[8]{0} all-reduce(%g), channel_id=1, to_apply=%add',
   'transpose(jvp(ResNet))/layer1_0/bn1/reduce_sum'),
  ('%conditional.11 = f32[8]{0} conditional(%p, %g, %g), branch_computations={%b0, %b1}', ''),
  ('ROOT %sqrt.12 = f32[8]{0} sqrt(%g)', 'sqrt'),
]) + '\n}\n'


def test_parse_hlo_names_each_instruction_by_what_it_computes():
  table = op_profile.parse_hlo(HLO)
  categories = {name: table[name].category for name in (
    'ynn_fusion.7', 'sums', 'copy_fusion', 'relu', 'convolution.9', 'all-reduce.10',
    'conditional.11', 'sqrt.12')}
  assert categories == {
    'ynn_fusion.7': 'matmul', 'sums': 'reduction', 'copy_fusion': 'copy/transpose',
    'relu': 'elementwise fusion', 'convolution.9': 'convolution', 'all-reduce.10': 'collective',
    'conditional.11': 'control flow', 'sqrt.12': 'other'}
  # Instructions inside called computations are known too (a branch's ops are traced by name).
  assert table['dot.1'].category == 'matmul' and table['max.5'].opcode == 'maximum'
  assert table['sums'].source.endswith('layer2_3/bn1/reduce_sum')


@pytest.mark.parametrize('source, passed, module, stage', [
  ('jit(train_step)/transpose(jvp(ResNet))/layer2_0/conv2/conv2._canonical_grads/cond',
   'backward', 'layer2_0/conv2', 'layer2_0'),
  ('jit(train_step)/jvp(ResNet)/layer1_0/bn2/reduce_sum', 'forward', 'layer1_0/bn2', 'layer1_0'),
  ('jit(train_step)/jvp(ResNet)/ResNet._stem/conv1/conv_general_dilated', 'forward',
   'ResNet._stem/conv1', 'ResNet._stem'),
  ('jit(train_step)/jvp()/neg', 'forward', '', ''),  # The loss, outside the model.
  ('jit(train_step)/jvp(jit(_one_hot))/eq', 'forward', '', ''),
  ('jit(train_step)/sqrt', 'update', '', ''),
])
def test_pass_and_module_come_from_the_source_name(source, passed, module, stage):
  assert op_profile.pass_of(source) == passed
  assert op_profile.module_of(source) == module
  assert op_profile.module_of(source, 1) == stage


def _event(name, start, duration, thread='t0', device=0, run=0):
  return Event(thread, device, name, start, duration, run)


def test_self_times_subtract_nested_events_on_the_same_thread():
  events = [_event('conditional.11', 0, 100), _event('relu', 10, 30), _event('sums', 50, 20),
            _event('sqrt.12', 60, 40, thread='t1')]  # Overlaps in time on another thread.
  got = {e.name: ns for e, ns in op_profile.self_times(events)}
  assert got == {'conditional.11': 50, 'relu': 30, 'sums': 20, 'sqrt.12': 40}


def test_gaps_go_to_the_event_that_ended_last_and_stop_at_the_step():
  events = [_event('convolution.9', 0, 5), _event('relu', 2, 1),  # relu ends first
            _event('sums', 25, 5),  # gap 5..25 after the convolution's hand-off
            _event('sqrt.12', 40, 5, run=1)]  # the next step: its gap is the host's, not sums'
  gaps = [(e.name, ns) for e, ns in op_profile.gaps_after(events)]
  assert gaps == [('convolution.9', 20)]
  assert op_profile.busy_ns(events, lambda e: e.device) == {0: 15}


def test_summarize_adds_up_and_ranks_ops_with_their_gaps():
  table = op_profile.parse_hlo(HLO)
  events = [_event('ynn_fusion.7', 0, 4_000), _event('convolution.9', 4_000, 1_000),
            _event('relu', 9_000, 1_000), _event('ynn_fusion.7', 10_000, 4_000, device=1,
                                                 thread='t1')]
  s = op_profile.summarize(events, table, steps=1, wall_s=20e-6, cores=2, top=3)
  assert s['traced_s_per_step'] == pytest.approx(10e-6)
  assert sum(s['by_category'].values()) == pytest.approx(s['traced_s_per_step'])
  assert s['by_category'] == pytest.approx({'matmul': 8e-6, 'convolution': 1e-6,
                                            'elementwise fusion': 1e-6})
  assert s['gaps_by_preceding_category'] == pytest.approx({'convolution': 4e-6})
  assert s['untraced_core_s_per_step'] == pytest.approx(2 * 20e-6 - 10e-6)
  assert s['by_pass'] == pytest.approx({'forward': 9e-6, 'backward': 1e-6})
  top = s['top_ops']
  assert [op['op'] for op in top] == ['ynn_fusion.7', 'convolution.9', 'relu']
  assert top[1]['s_per_step'] == pytest.approx(5e-6)  # 1 traced + 4 of gap after it
  assert top[1]['gap_after_s_per_step'] == pytest.approx(4e-6)
  assert s['device_traced_fraction'] == pytest.approx({'0': 0.3, '1': 0.2})
  assert 'convolution' in op_profile.format_summary(s)


def test_bench_profile_traces_the_train_step(tmp_path):
  out = bench.main(['profile', '--model', 'resnet_tiny', '--batch', '8', '--image-size', '16',
                    '--num-classes', '10', '--steps', '2', '--warmup', '1', '--top', '5',
                    '--fields', 'remat=True', '--trace-dir', str(tmp_path / 'trace'),
                    '--json', str(tmp_path / 'p.json')])
  assert json.loads((tmp_path / 'p.json').read_text()) == json.loads(json.dumps(out))
  assert out['fields'] == {'remat': True} and out['devices'] == 8
  assert list(tmp_path.glob('trace/**/*.xplane.pb'))
  # Every step runs convolutions, forward and backward, and collectives over 8 devices.
  assert out['by_category']['convolution'] > 0 and out['by_category']['collective'] > 0
  assert out['by_pass']['forward'] > 0 and out['by_pass']['backward'] > 0
  assert {'layer1', 'layer2', 'ResNet._stem'} <= set(out['by_stage'])
  assert sum(out['by_category'].values()) == pytest.approx(out['traced_s_per_step'])
  assert len(out['top_ops']) == 5 and all(op['s_per_step'] > 0 for op in out['top_ops'])


def test_module_of_sees_through_remat_scopes():
  source = ('jit(train_step)/transpose(jvp(ResNet))/transpose(jvp(jvp(ResNet)))/'
            'layer2_0.shared_forward_fn/jvp()/checkpoint/rematted_computation/layer2_0._call/'
            'layer2_0/downsample_bn/reduce_sum')
  assert op_profile.module_of(source) == 'layer2_0/downsample_bn'
  head = 'jit(train_step)/jvp(ResNet)/ResNet._head/fc/dot_general'
  assert op_profile.module_of(head, 1) == 'ResNet._head'
