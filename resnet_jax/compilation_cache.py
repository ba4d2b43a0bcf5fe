"""Persistent XLA compilation cache: the second start of a run loads its executables from disk."""

import os

import jax


def enable(directory: str) -> str | None:
  """Turns the cache on in `directory` (created if needed); '' leaves it off. Returns the path."""
  if not directory:
    return None
  path = os.path.abspath(os.path.expanduser(directory))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise OSError(
      f'config.compilation_cache_dir={directory!r} cannot be created ({e}); point it at a '
      "writable directory or set --config.compilation_cache_dir='' to turn the cache off."
    ) from e
  jax.config.update('jax_compilation_cache_dir', path)
  # Cache every executable: the train step compiles in seconds on CPU, under jax's default
  # threshold of one second for small models, and those restarts are the common case in debugging.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return path
