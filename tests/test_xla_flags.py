"""XLA flag defaults are added, never override the user's."""

from resnet_jax import xla_flags


def test_defaults_added_and_user_flags_kept():
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  flags = xla_flags.apply_defaults(env)
  assert '--xla_force_host_platform_device_count=8' in flags
  assert '--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED' in flags
  env = {'XLA_FLAGS': '--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT'}
  assert xla_flags.apply_defaults(env) == '--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT'
  assert xla_flags.apply_defaults({}).startswith('--xla_cpu_scheduler_type=')
