"""XLA flag defaults chosen by measurement; applied before the backend starts, never overriding.

XLA:CPU's memory-optimised scheduler: ResNet-50 train step at batch 16, 224x224, peak memory
2.38 -> 1.52 GB (-36%) at the same speed (4.99 vs 4.94 img/s, medians of two interleaved runs
on 2 cores; `python -m resnet_jax.bench train`). GPU and TPU ignore xla_cpu_* flags.

Virtual CPU devices (`cpu_devices`): XLA:CPU runs a train step's ops one after another and most
ops of a small or mid-sized network use about one core, so a 2-core machine sat half idle.
Splitting the host into N devices and the batch across them (the same data-parallel step as on
N GPUs, BatchNorm statistics still over the global batch) runs N op streams at once. Measured on
2 cores (`bench train`, fp32): CIFAR ResNet-20 b128@28 528 -> 711 (2 devices) -> 830 img/s (4);
ResNet-18 b32@224 13.3 -> 18.0 (2) -> 18.5 (4); ResNet-50 b16@224 5.19 -> 6.44 (2) -> 5.86 (4).
The flag only shapes the CPU platform; on GPU/TPU `jax.devices()` are the accelerators.

Convolutions on XLA:CPU's Eigen path instead of YNNPACK (`-individual_convolution`; dots stay
on YNNPACK): jax 0.10.2 hands every convolution to YNNPACK, which runs the kernel gradient of a
3x3 or 7x7 convolution 2-5x slower than Eigen (ResNet-18 b32: layer1 3x3 kernel gradient 205
-> 58 ms, stem 7x7 474 -> 86 ms; forward 53 -> 30 ms) and does not split one convolution over
the cores. Train step, 2 cores, default devices, medians of 2 interleaved rounds: ResNet-18
b32 10.7 -> 14.6 img/s, WRN-16-2 b128@28 219 -> 278, CIFAR ResNet-20 b128@28 405 -> 432,
ResNet-50 b16 4.02 -> 4.40, ResNet-152 b8 1.70 -> 1.76; results equal to float32 rounding
(parity tests unchanged). `bench train --xla-variant`, bench/results/xla_flags_*.json.

XLA:CPU's all-reduce combiner off when one process splits the host into virtual devices: the
combiner merges every gradient all-reduce of the step into one, which cannot start before the
last gradient exists, so each device holds all of its gradients at once (and the updated
parameters cannot be written as each gradient appears). Uncombined, each all-reduce runs as its
gradient is ready. Two devices, medians of 2-3 interleaved rounds, same results: ResNet-50 b16
1.02x speed, planned peak memory -5.0%; ResNet-152 b8 1.02x, -4.2%; ResNet-18 b32 0.99x, -4.0%;
WRN-16-2 b128@28 0.99x, -3.7%; ResNet-50 b16 remat 0.534 -> 0.464 GB per device
(bench/results/xla_flags_all_reduce_combiner_*.json). Not applied across processes: there each
all-reduce is a network collective and its latency, unmeasured here, favours combining.
"""

import os

DEFAULTS = {
  'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED',
  'xla_cpu_experimental_ynn_fusion_type': '-individual_convolution',
}
DEVICE_COUNT_FLAG = 'xla_force_host_platform_device_count'
# Added only for virtual CPU devices within one process (see the docstring).
VIRTUAL_DEVICE_DEFAULTS = {'xla_disable_hlo_passes': 'cpu-all-reduce-combiner'}
MAX_AUTO_CPU_DEVICES = 8  # Beyond the 2-4 measured; more devices than this only shrink batches.
# Deep networks on large images run faster on one device: each convolution and matmul is large
# enough to use every core by itself, so a split adds only the rendezvous of every BatchNorm
# (statistics over the global batch, forward and backward) and the wait for the slower device.
# One vs two devices on 2 cores, 224x224, medians of 2 interleaved rounds on 2026-12-06
# (bench/results/devices_*_2026-12-06.json): ResNet-101 b16 1.26x and -15% peak memory,
# ResNet-152 b8 1.20x and -23% (1.04x on 2026-12-04), ResNet-50 b16 1.03x (level; 2 devices
# 1.01x on 2026-12-03), ResNet-18 b32 0.92x (2026-12-03). Small images keep the split: CIFAR
# ResNet-110 (54 blocks) b128@28 0.90x on one device.
# Only where measured: with more cores one device's elementwise ops leave more of them idle.
ONE_DEVICE_MIN_BLOCKS = 33  # ResNet-101's residual blocks; ResNet-50 has 16.
ONE_DEVICE_MIN_IMAGE_SIZE = 128
ONE_DEVICE_MAX_CORES = 2


def available_cores() -> int:
  """CPU cores this process may run on (the affinity mask, not the machine's total)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # macOS has no affinity masks.
    return os.cpu_count() or 1


def auto_cpu_devices(batch_per_process: int, cores: int | None = None, *, blocks: int = 0,
                     image_size: int = 0) -> int:
  """The most devices, up to one per core, that split the batch evenly (1 if none does).

  One device for deep networks on large images (`blocks` residual blocks, `image_size` pixels
  square) on up to 2 cores (see ONE_DEVICE_MIN_BLOCKS): their ops are big enough to use both
  cores on their own.
  """
  cores = cores or available_cores()
  if (blocks >= ONE_DEVICE_MIN_BLOCKS and image_size >= ONE_DEVICE_MIN_IMAGE_SIZE
      and cores <= ONE_DEVICE_MAX_CORES):
    return 1
  limit = min(cores, MAX_AUTO_CPU_DEVICES)
  return max(d for d in range(1, limit + 1) if batch_per_process % d == 0)


def apply_defaults(environ=os.environ, cpu_devices: int = 1, processes: int = 1) -> str:
  """Adds each default to XLA_FLAGS unless the user set that flag; returns the result.

  `cpu_devices` > 1 asks for that many virtual CPU devices, unless XLA_FLAGS already sets
  --xla_force_host_platform_device_count (the user's or a launcher's choice wins); with one
  process (`processes`), it also adds VIRTUAL_DEVICE_DEFAULTS.
  """
  flags = environ.get('XLA_FLAGS', '')
  defaults = dict(DEFAULTS)
  if cpu_devices > 1:
    defaults[DEVICE_COUNT_FLAG] = str(cpu_devices)
    if processes == 1:
      defaults.update(VIRTUAL_DEVICE_DEFAULTS)
  for name, value in defaults.items():
    if f'--{name}=' not in flags:
      flags = f'{flags} --{name}={value}'.strip()
  environ['XLA_FLAGS'] = flags
  return flags


def merge(flags: str, overrides: str) -> str:
  """`flags` with every --name=value of `overrides` replacing the same name's (or appended)."""
  def name(token: str) -> str:
    return token.split('=', 1)[0]
  replaced = {name(t) for t in overrides.split()}
  kept = [t for t in flags.split() if name(t) not in replaced]
  return ' '.join(kept + overrides.split())
