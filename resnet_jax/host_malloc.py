"""glibc malloc settings for a training process, applied by re-executing it once at start-up.

XLA:CPU allocates a step's temporary buffer (every activation and gradient: ~1 GB for ResNet-50
b16) afresh for each execution and frees it after. glibc serves allocations that large with
mmap and returns them with munmap, so every step the kernel maps and zeroes that memory again,
4 KiB page by page: ResNet-50 b16 on one device took ~227,000 page faults and ~0.5 s of system
time per 4 s step. The tunables below keep freed memory in malloc's heap (one arena, no mmap,
no trimming), so the next step reuses it with no faults, and back new heap memory with
transparent huge pages. Measured in `bench/results/host_malloc_*.json` (default vs these).

glibc reads GLIBC_TUNABLES only when a process starts, so `reexec_with_tunables` re-executes
the entry point (same interpreter, arguments and PID) with them merged into the environment,
before anything else runs. A GLIBC_TUNABLES that already sets any of these keys is left as it
is, which is also the opt-out: `GLIBC_TUNABLES=glibc.malloc.hugetlb=0 python -m ...` runs with
glibc's defaults. Only where it was measured: processes that will run on CPU (JAX_PLATFORMS=cpu,
or no GPU/TPU plugin installed), whose step buffers are host memory; accelerator hosts keep
glibc's per-thread arenas for their input threads. Other C libraries (macOS, musl) and glibc
older than 2.35 are left alone.
"""

import os
import pkgutil
import platform
import sys

ENV_VAR = 'GLIBC_TUNABLES'
TUNABLES = {
  'glibc.malloc.arena_max': '1',  # Threads' own arenas cap heaps at 64 MiB and mmap the rest.
  'glibc.malloc.mmap_max': '0',  # Large buffers from the heap, not mmap: reused, not re-faulted.
  'glibc.malloc.trim_threshold': '4294967295',  # Never hand the heap's top back to the kernel.
  'glibc.malloc.hugetlb': '1',  # madvise(MADV_HUGEPAGE) on the heap: 2 MiB faults while it grows.
}
MIN_GLIBC = (2, 35)  # The first with glibc.malloc.hugetlb.
ACCELERATOR_PACKAGES = ('jax_cuda', 'jax_rocm', 'libtpu')  # Prefixes of jax's plugin packages.


def glibc_version() -> tuple[int, ...] | None:
  """This interpreter's glibc version, or None for another C library."""
  libc, version = platform.libc_ver()
  if libc != 'glibc' or not version:
    return None
  return tuple(int(part) for part in version.split('.')[:2] if part.isdigit())


def has_tunables(version: tuple[int, ...] | None) -> bool:
  """Whether a C library of this glibc_version() honours TUNABLES (None: not glibc)."""
  return version is not None and version >= MIN_GLIBC


def runs_on_cpu(environ=os.environ) -> bool:
  """Whether jax will pick the CPU: JAX_PLATFORMS says so, or no accelerator plugin is
  installed (found without importing anything)."""
  platforms = environ.get('JAX_PLATFORMS', '').strip().lower()
  if platforms:
    return platforms == 'cpu'
  return not any(module.name.startswith(ACCELERATOR_PACKAGES) for module in pkgutil.iter_modules())


def merged(current: str, tunables: dict[str, str] = TUNABLES) -> str:
  """`current` (a GLIBC_TUNABLES value) with `tunables` appended, or unchanged if it sets any
  of them (the user chose)."""
  entries = [e for e in current.split(':') if e]
  names = {e.partition('=')[0] for e in entries}
  if names & set(tunables):
    return current
  return ':'.join(entries + [f'{name}={value}' for name, value in tunables.items()])


def reexec_with_tunables(environ=os.environ, argv: list[str] | None = None,
                         libc_version=glibc_version) -> None:
  """Re-executes this process with TUNABLES in its environment; returns if nothing is to do.

  Call it first in a command-line entry point (`if __name__ == '__main__':`), never from a
  library function: the process is replaced.
  """
  if not has_tunables(libc_version()) or not runs_on_cpu(environ):
    return
  current = environ.get(ENV_VAR, '')
  wanted = merged(current)
  argv = argv if argv is not None else list(getattr(sys, 'orig_argv', []))
  if wanted == current or not argv or not sys.executable:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *argv[1:]], {**environ, ENV_VAR: wanted})
