"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere."""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests must not touch the network: TFDS would otherwise try GCS for dataset metadata.
os.environ.setdefault("TFDS_DISABLE_GCS", "1")
os.environ.setdefault("NO_GCE_CHECK", "true")

# Tests compile with the same XLA flag defaults as `python -m resnet_jax.main`.
from resnet_jax import xla_flags  # noqa: E402  (imports no jax)

xla_flags.apply_defaults()

# One persistent compilation cache for the whole run, shared by both xdist workers: tests that
# compile the same program (the same tiny model's train step, the same conversion) load it from
# disk instead of compiling it again. Executables loaded from it keep their memory and cost
# analyses, which several tests read. Subprocesses inherit it, except that resnet_jax.main
# switches to its config's compilation_cache_dir when that is set (the default config sets
# one); `compilation_cache_dir=''` leaves this one on. A fresh clone starts it empty; each run
# after a code change adds up to ~55 MB, which `pytest --cache-clear` removes with the rest of
# .pytest_cache.
_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      ".pytest_cache", "xla")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
