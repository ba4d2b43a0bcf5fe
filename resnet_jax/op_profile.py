"""Where a compiled step's time goes, from a profiler trace and the step's HLO.

`jax.profiler` records one event per executed HLO instruction (on CPU, per thunk, tagged with
its instruction name and device). This module joins those events with the instruction table
parsed from `compiled.as_text()`, so each microsecond is attributed to

  - a category: convolution, matmul, reduction, elementwise fusion, copy/transpose, collective,
    control flow (a conditional's or loop's own time, its body's ops counted apart), other;
  - a pass: forward (JAX's `jvp(...)` in the op's source name), backward (`transpose(...)`),
    or 'update' (the optimiser and metrics: everything outside the model's differentiation);
  - the model's module path (e.g. `layer3_5/conv2`), which flax writes into the source name.

Times are self times: an event nested in another (the ops of a conditional's branch inside the
conditional) is subtracted from its parent, so the categories add up to the traced time.

What the trace cannot see. XLA:CPU hands a convolution to Eigen's thread pool and ends the op's
event at the hand-off (a 3x3 convolution of 11 ms wall time traced 0.18 ms), so convolution
work runs outside any event. The summary therefore also reports the untraced core time: the
cores' capacity (cores x step) less the time threads spent inside traced ops. On one device it
is mostly convolution work; with devices sharing cores it also holds the time a thread had
nothing ready to run.
"""

import collections
import re
from collections.abc import Iterable
from dataclasses import dataclass

COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all',
               'collective-permute', 'all-reduce-start', 'all-gather-start',
               'collective-permute-start')
CONTROL = ('conditional', 'while', 'call')
COPIES = ('copy', 'transpose', 'copy-start')
# A fusion is named after the heaviest op it computes, in this order.
_FUSION_RANK = (('convolution', 'convolution'), ('dot', 'matmul'), ('reduce', 'reduction'),
                ('reduce-window', 'reduction'), ('select-and-scatter', 'reduction'))

_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][a-z0-9\-]*)\(')
_COMPUTATION = re.compile(r'^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s*->\s*.*\{\s*$')
_CALLS = re.compile(r'calls=%?([\w.\-]+)')
_OP_NAME = re.compile(r'op_name="([^"]*)"')


@dataclass(frozen=True)
class Instruction:
  name: str
  opcode: str
  category: str
  source: str  # JAX's op_name metadata: 'jit(f)/jvp(ResNet)/layer1_0/conv1/...'


def _opcodes_by_computation(hlo_text: str) -> dict[str, set[str]]:
  ops, current = collections.defaultdict(set), None
  for line in hlo_text.splitlines():
    head = _COMPUTATION.match(line)
    if head:
      current = head.group(1)
      continue
    inst = _INSTRUCTION.match(line)
    if inst and current is not None:
      ops[current].add(inst.group(2))
  return ops


def _category(opcode: str, line: str, called_ops: set[str]) -> str:
  if opcode == 'fusion':
    for op, category in _FUSION_RANK:
      if op in called_ops:
        return category
    return 'copy/transpose' if called_ops and called_ops <= {
      'copy', 'transpose', 'parameter', 'bitcast'} else 'elementwise fusion'
  if opcode == 'convolution':
    return 'convolution'
  if opcode == 'dot' or ('custom_call_target' in line and 'matmul' in line.lower()):
    return 'matmul'
  if opcode in ('reduce', 'reduce-window', 'select-and-scatter'):
    return 'reduction'
  if opcode in COLLECTIVES:
    return 'collective'
  if opcode in CONTROL:
    return 'control flow'
  if opcode in COPIES:
    return 'copy/transpose'
  return 'other'


def parse_hlo(hlo_text: str) -> dict[str, Instruction]:
  """Instruction name -> Instruction, over every computation of an HLO module's text."""
  ops = _opcodes_by_computation(hlo_text)
  table = {}
  for line in hlo_text.splitlines():
    inst = _INSTRUCTION.match(line)
    if not inst:
      continue
    name, opcode = inst.groups()
    calls = _CALLS.search(line)
    called = ops.get(calls.group(1), set()) if calls else set()
    source = _OP_NAME.search(line)
    table[name] = Instruction(name, opcode, _category(opcode, line, called),
                              source.group(1) if source else '')
  return table


def pass_of(source: str) -> str:
  """'forward', 'backward' or 'update', from JAX's transformation names in an op's source."""
  body = source.split('/', 1)[1] if source.startswith('jit(') and '/' in source else source
  if body.startswith('transpose('):
    return 'backward'
  if body.startswith('jvp('):
    return 'forward'
  return 'update'


_IDENT = re.compile(r'[A-Za-z_]\w*')
_METHOD = re.compile(r'([A-Za-z_]\w*)\.\w+')


def _module_runs(parts: list[str]):
  """Runs of module names in a source's parts, each with the part that follows it."""
  run = []
  for i, part in enumerate(parts):
    method = _METHOD.fullmatch(part)
    # A method scope opens a run when the wrapper before it names its class ('jvp(ResNet)'
    # before 'ResNet._stem'), so the stem and head keep their own stage.
    if not run and method and i and re.search(rf'\b{method.group(1)}\b', parts[i - 1]):
      run = [part]
    elif _IDENT.fullmatch(part) and i < len(parts) - 1:
      run.append(part)
    else:
      if run:
        yield run, part, i == len(parts) - 1
      run = []


def module_of(source: str, depth: int = 2) -> str:
  """The first `depth` flax module names of an op's source ('' outside the model).

  'jit(train_step)/transpose(jvp(ResNet))/layer2_0/conv2/conv2._canonical_grads/cond' ->
  'layer2_0/conv2' (depth 2) or 'layer2_0' (depth 1). The module path is the first run of plain
  names followed by the primitive (the last part) or by a method of its own last module;
  transformation scopes (remat's 'checkpoint/rematted_computation', a branch's name) are not.
  """
  for run, after, after_is_primitive in _module_runs(source.split('/')):
    method = _METHOD.fullmatch(after)
    if after_is_primitive or (method and method.group(1) == run[-1].split('.')[0]):
      return '/'.join(run[:depth])
  return ''


@dataclass(frozen=True)
class Event:
  """One executed instruction: where it ran (thread), which device, when, and its name."""
  thread: str
  device: int
  name: str
  start_ns: int
  duration_ns: int
  run: int = 0  # The execution (step) it belongs to.


def events_from_profile(profile, module_name: str) -> list[Event]:
  """The events of HLO module `module_name` in a `jax.profiler.ProfileData`."""
  out = []
  for plane in profile.planes:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if stats.get('hlo_module') != module_name or 'hlo_op' not in stats:
          continue
        out.append(Event(f'{plane.name}/{line.name}', int(stats.get('device_ordinal', -1)),
                         str(stats['hlo_op']), int(event.start_ns), int(event.duration_ns),
                         int(stats.get('run_id', 0))))
  return out


def self_times(events: Iterable[Event]) -> list[tuple[Event, int]]:
  """(event, its duration less that of the events nested in it on the same thread)."""
  by_thread = collections.defaultdict(list)
  for e in events:
    by_thread[e.thread].append(e)
  out = []
  for evs in by_thread.values():
    evs.sort(key=lambda e: (e.start_ns, -e.duration_ns))
    stack: list[list] = []  # [event, self time so far]
    for e in evs:
      while stack and e.start_ns >= stack[-1][0].start_ns + stack[-1][0].duration_ns:
        out.append(tuple(stack.pop()))
      if stack:
        stack[-1][1] -= e.duration_ns
      stack.append([e, e.duration_ns])
    out.extend(tuple(item) for item in stack)
  return out


def busy_ns(events: Iterable[Event], key) -> dict:
  """Per key(event) (a device, a thread), the time during which one of its events ran."""
  spans = collections.defaultdict(list)
  for e in events:
    spans[key(e)].append((e.start_ns, e.start_ns + e.duration_ns))
  busy = {}
  for k, intervals in spans.items():
    intervals.sort()
    total, end = 0, None
    for s, f in intervals:
      if end is None or s > end:
        total += f - s
        end = f
      elif f > end:
        total += f - end
        end = f
    busy[k] = total
  return busy


def gaps_after(events: Iterable[Event]) -> list[tuple[Event, int]]:
  """Per device and step, each idle gap between its events, with the event that ended last before.

  On XLA:CPU the op before a gap is most often a convolution whose event ended at the hand-off
  to Eigen while the work ran on: the gap is then that convolution's untraced time (plus, with
  several devices, any wait for the others).
  """
  by_device = collections.defaultdict(list)
  for e in events:
    by_device[e.device, e.run].append(e)  # Within one step: not the host's time between steps.
  out = []
  for evs in by_device.values():
    evs.sort(key=lambda e: e.start_ns)
    last, end = None, None
    for e in evs:
      if end is not None and e.start_ns > end:
        out.append((last, e.start_ns - end))
      if end is None or e.start_ns + e.duration_ns >= end:
        last, end = e, e.start_ns + e.duration_ns
  return out


def summarize(events: list[Event], table: dict[str, Instruction], steps: int, wall_s: float,
              cores: int, top: int = 20) -> dict:
  """Seconds per step by category, pass and stage, the top ops, and the untraced core time.

  cores: the CPU cores the step ran on (what the untraced time is counted against).
  """
  timed = self_times(events)
  by = {key: collections.Counter() for key in ('category', 'pass', 'stage')}
  per_op = collections.Counter()
  counts = collections.Counter()
  for event, ns in timed:
    inst = table.get(event.name, Instruction(event.name, '?', 'other', ''))
    seconds = ns / 1e9 / steps
    by['category'][inst.category] += seconds
    by['pass'][pass_of(inst.source)] += seconds
    # 'layer3_5' -> 'layer3': blocks numbered within a stage count to the stage.
    stage = re.sub(r'_\d+$', '', module_of(inst.source, 1)) or '(outside the model)'
    by['stage'][stage] += seconds
    per_op[event.name] += seconds
    counts[event.name] += 1
  gap_by_category = collections.Counter()
  gap_per_op = collections.Counter()
  for event, ns in gaps_after(events):
    inst = table.get(event.name, Instruction(event.name, '?', 'other', ''))
    gap_by_category[inst.category] += ns / 1e9 / steps
    gap_per_op[event.name] += ns / 1e9 / steps
  step_s = wall_s / steps
  devices = sorted({e.device for e in events})
  device_busy = busy_ns(events, lambda e: e.device)
  thread_busy = busy_ns(events, lambda e: e.thread)

  def table_of(counter):
    return {k: v for k, v in counter.most_common()}

  top_ops = []
  for name, seconds in (per_op + gap_per_op).most_common(top):
    inst = table.get(name, Instruction(name, '?', 'other', ''))
    top_ops.append({'op': name, 'category': inst.category, 'pass': pass_of(inst.source),
                    'module': module_of(inst.source), 's_per_step': seconds,
                    'traced_s_per_step': per_op[name], 'gap_after_s_per_step': gap_per_op[name],
                    'runs_per_step': counts[name] / steps / max(1, len(devices)),
                    'source': inst.source})
  return {
    'step_s': step_s,
    'traced_s_per_step': sum(per_op.values()),
    'cores': cores,
    'untraced_core_s_per_step': cores * step_s - sum(thread_busy.values()) / 1e9 / steps,
    'device_traced_fraction': {str(d): device_busy[d] / 1e9 / steps / step_s for d in devices},
    'by_category': table_of(by['category']),
    # Each device's idle gaps, charged to the op that ended last before them (gaps_after).
    'gaps_by_preceding_category': table_of(gap_by_category),
    'by_pass': table_of(by['pass']),
    'by_stage': table_of(by['stage']),
    'top_ops': top_ops,
  }


def format_summary(summary: dict) -> str:
  """A readable table of `summarize`'s result."""
  traced = summary['traced_s_per_step'] or 1.0
  lines = [
    f"step {summary['step_s'] * 1e3:.1f} ms on {summary['cores']} cores: traced ops "
    f"{summary['traced_s_per_step'] * 1e3:.1f} ms, untraced core time "
    f"{summary['untraced_core_s_per_step'] * 1e3:.1f} ms (convolutions, and idle); "
    'share of the step in traced ops per device: ' + ', '.join(
      f'{d}: {f:.0%}' for d, f in summary['device_traced_fraction'].items())]
  for key in ('by_category', 'by_pass', 'by_stage'):
    lines.append(f"{key[3:]:>10}: " + ', '.join(
      f'{name} {s * 1e3:.0f} ms ({s / traced:.0%})' for name, s in summary[key].items()))
  lines.append('idle gaps after (per device, summed): ' + ', '.join(
    f'{name} {s * 1e3:.0f} ms' for name, s in summary['gaps_by_preceding_category'].items()))
  lines.append('top ops (ms per step: traced + gap after; category, pass, module):')
  for op in summary['top_ops']:
    lines.append(f"  {op['s_per_step'] * 1e3:8.1f} = {op['traced_s_per_step'] * 1e3:6.1f} + "
                 f"{op['gap_after_s_per_step'] * 1e3:6.1f}  {op['op']:<28} {op['category']:<18} "
                 f"{op['pass']:<8} {op['module']}")
  return '\n'.join(lines)
