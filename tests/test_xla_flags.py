"""XLA flag defaults are added, never override the user's."""

from resnet_jax import xla_flags


def test_defaults_added_and_user_flags_kept():
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  flags = xla_flags.apply_defaults(env)
  assert '--xla_force_host_platform_device_count=8' in flags
  assert '--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED' in flags
  env = {'XLA_FLAGS': '--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT'}
  assert xla_flags.apply_defaults(env).split()[0] == (
    '--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT')
  assert xla_flags.apply_defaults(env).count('scheduler_type') == 1
  assert xla_flags.apply_defaults({}).startswith('--xla_cpu_scheduler_type=')
  assert '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution' in flags
  env = {'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type=+individual_convolution'}
  assert xla_flags.apply_defaults(env).count('ynn_fusion_type') == 1


def _ynn_fusions(xla_flags_value: str) -> tuple[int, int]:
  """YNNPACK fusions in a compiled 3x3 convolution and in a compiled matmul, in a fresh process."""
  import subprocess
  import sys
  code = (
    'import jax, jax.numpy as jnp\n'
    'conv = jax.jit(lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",'
    ' dimension_numbers=("NHWC", "HWIO", "NHWC")))\n'
    'dot = jax.jit(lambda a, b: a @ b)\n'
    'c = conv.lower(jnp.ones((4, 16, 16, 32)), jnp.ones((3, 3, 32, 32))).compile().as_text()\n'
    'd = dot.lower(jnp.ones((64, 64)), jnp.ones((64, 64))).compile().as_text()\n'
    'print(c.count("kind=kCustom"), d.count("kind=kCustom"))\n'
  )
  env = {'PATH': '', 'XLA_FLAGS': xla_flags_value, 'JAX_PLATFORMS': 'cpu'}
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
  return int(out[0]), int(out[1])


def test_convolutions_leave_ynnpack_and_dots_stay():
  # The default reaches the compiler: the convolution is no YNNPACK fusion, the matmul still is;
  # with YNNPACK's own default (the flag overridden) the convolution is one.
  assert _ynn_fusions(xla_flags.apply_defaults({})) == (0, 1)
  overridden = {'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type=+individual_convolution'}
  assert _ynn_fusions(xla_flags.apply_defaults(overridden)) == (1, 1)


def test_merge_replaces_flags_by_name():
  assert xla_flags.merge('--a=1 --b=2', '--b=3 --c=4') == '--a=1 --b=3 --c=4'
  assert xla_flags.merge('', '') == '' and xla_flags.merge('--a=1', '') == '--a=1'


def test_cpu_devices_added_unless_the_user_set_a_count():
  assert '--xla_force_host_platform_device_count=2' in xla_flags.apply_defaults({}, cpu_devices=2)
  assert 'device_count' not in xla_flags.apply_defaults({}, cpu_devices=1)
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  flags = xla_flags.apply_defaults(env, cpu_devices=2)
  assert flags.count('device_count') == 1 and 'device_count=8' in flags


def test_all_reduce_combiner_off_only_for_virtual_devices_of_one_process():
  combiner_off = '--xla_disable_hlo_passes=cpu-all-reduce-combiner'
  assert combiner_off in xla_flags.apply_defaults({}, cpu_devices=2)
  assert combiner_off not in xla_flags.apply_defaults({}, cpu_devices=1)
  assert combiner_off not in xla_flags.apply_defaults({}, cpu_devices=2, processes=2)
  assert combiner_off not in xla_flags.apply_defaults({}, cpu_devices=2, processes=0)
  env = {'XLA_FLAGS': '--xla_disable_hlo_passes=foo'}  # The user's list wins whole.
  assert xla_flags.apply_defaults(env, cpu_devices=2).count('disable_hlo_passes') == 1


def test_auto_cpu_devices_divides_the_batch_and_caps_at_the_cores():
  assert xla_flags.auto_cpu_devices(128, cores=2) == 2
  assert xla_flags.auto_cpu_devices(128, cores=64) == xla_flags.MAX_AUTO_CPU_DEVICES
  assert xla_flags.auto_cpu_devices(6, cores=4) == 3  # 4 does not divide 6
  assert xla_flags.auto_cpu_devices(7, cores=4) == 1  # a prime batch: no split
  assert xla_flags.auto_cpu_devices(1) == 1


def test_auto_cpu_devices_keeps_deep_networks_on_large_images_on_one_device():
  from resnet_jax.models import residual_blocks
  assert residual_blocks('resnet50') == 16 and residual_blocks('resnet101') == 33
  assert residual_blocks('vgg16') == 0 and residual_blocks('no_such_model') == 0
  def auto(model, image_size):
    return xla_flags.auto_cpu_devices(16, cores=2, blocks=residual_blocks(model),
                                      image_size=image_size)
  assert auto('resnet101', 224) == auto('resnet152', 224) == auto('resnet200', 160) == 1
  assert auto('resnet50', 224) == auto('resnet18', 224) == 2  # measured level / faster on two
  assert auto('cifar_resnet110', 28) == auto('resnet152', 32) == 2  # small images keep the split
  # Measured on 2 cores only: more cores keep the split.
  assert xla_flags.auto_cpu_devices(16, cores=8, blocks=50, image_size=224) == 8


def test_main_resolves_auto_against_processes_and_accumulation(monkeypatch):
  from configs import default
  from resnet_jax import main
  config = default.get_config()
  config.batch_size = 96
  config.cpu_devices = 3
  assert main._cpu_devices(config) == 3
  config.cpu_devices = 0
  config.optim.grad_accum_steps = 3  # micro-batches of 32
  config.distributed_num_processes = 2  # 16 per process per micro-batch
  assert main._cpu_devices(config) == xla_flags.auto_cpu_devices(16)
  config.model.name, config.data.image_size = 'resnet152', 224
  monkeypatch.setattr(xla_flags, 'available_cores', lambda: 2)  # the rule's measured hosts
  assert main._cpu_devices(config) == 1
  config.model.name, config.data.image_size = 'cifar_resnet20', 32
  config.batch_size = 97  # invalid: left to the validator, which names the field
  assert main._cpu_devices(config) == 1
  assert main._process_count(config) == 2
  config.distributed_num_processes = 0
  assert main._process_count(config) == 1  # not distributed
  config.distributed = True
  monkeypatch.delenv('JAX_NUM_PROCESSES', raising=False)
  assert main._process_count(config) == 0  # a cluster says at initialisation: unknown here
  monkeypatch.setenv('JAX_NUM_PROCESSES', '4')  # a launcher's count
  assert main._process_count(config) == 4
