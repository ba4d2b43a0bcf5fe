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
