"""host_malloc: the malloc tunables reach a re-executed entry point, and glibc honours them."""

import subprocess
import sys
import textwrap

import pytest

from resnet_jax import host_malloc

needs_glibc = pytest.mark.skipif(
  not host_malloc.has_tunables(host_malloc.glibc_version()),
  reason='glibc >= 2.35 only (other C libraries are left alone)')


def test_merged_appends_the_tunables_and_keeps_the_users():
  tuned = host_malloc.merged('')
  assert tuned.split(':') == [f'{k}={v}' for k, v in host_malloc.TUNABLES.items()]
  assert host_malloc.merged('glibc.pthread.rseq=0') == 'glibc.pthread.rseq=0:' + tuned
  # Any of our keys set by the user: their choice, untouched (the documented opt-out).
  assert host_malloc.merged('glibc.malloc.hugetlb=0') == 'glibc.malloc.hugetlb=0'
  assert host_malloc.merged(tuned) == tuned


def test_no_reexec_for_other_c_libraries_old_glibc_or_accelerators(monkeypatch):
  def fail(*args):
    raise AssertionError('re-executed')
  monkeypatch.setattr(host_malloc.os, 'execve', fail)
  cpu = {'JAX_PLATFORMS': 'cpu'}
  host_malloc.reexec_with_tunables(cpu, ['python', 'x.py'], libc_version=lambda: None)
  host_malloc.reexec_with_tunables(cpu, ['python', 'x.py'], libc_version=lambda: (2, 31))
  host_malloc.reexec_with_tunables({'JAX_PLATFORMS': 'cuda,cpu'}, ['python', 'x.py'],
                                   libc_version=lambda: (2, 41))


def test_runs_on_cpu_follows_jax_platforms_then_the_installed_plugins(monkeypatch):
  assert host_malloc.runs_on_cpu({'JAX_PLATFORMS': 'cpu'})
  assert not host_malloc.runs_on_cpu({'JAX_PLATFORMS': 'tpu'})
  plugin = type('Module', (), {'name': 'jax_cuda12_plugin'})
  monkeypatch.setattr(host_malloc.pkgutil, 'iter_modules', lambda: [plugin])
  assert not host_malloc.runs_on_cpu({})
  monkeypatch.setattr(host_malloc.pkgutil, 'iter_modules', lambda: [])
  assert host_malloc.runs_on_cpu({})


def _run(tmp_path, script: str, env: dict) -> str:
  path = tmp_path / 'child.py'
  path.write_text(textwrap.dedent(script))
  proc = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True,
                        check=True)
  return proc.stdout


REEXEC = """
  import os
  from resnet_jax import host_malloc
  print('start', os.getpid(), os.environ.get('GLIBC_TUNABLES', ''), flush=True)
  host_malloc.reexec_with_tunables()
  print('running', os.getpid(), flush=True)
"""


@needs_glibc
def test_reexec_happens_once_with_the_tunables_or_not_at_all_when_the_user_set_them(
    tmp_path, monkeypatch):
  monkeypatch.delenv('GLIBC_TUNABLES', raising=False)
  import os
  lines = _run(tmp_path, REEXEC, dict(os.environ)).split('\n')
  (_, pid1, before), (_, pid2, after), (_, pid3) = (line.split(' ') for line in lines[:3])
  assert before == '' and after == host_malloc.merged('') and pid1 == pid2 == pid3
  lines = _run(tmp_path, REEXEC, {**os.environ, 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'})
  assert lines.split('\n')[:2] == [f'start {lines.split()[1]} glibc.malloc.hugetlb=0',
                                  f'running {lines.split()[1]}']


FAULTS = """
  import resource
  import numpy as np

  def faults():  # Minor page faults of five 64 MiB buffers, each written and freed.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
      buffer = np.empty(64 << 20, np.uint8)
      buffer.fill(1)
      del buffer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

  faults()  # The first round grows the heap.
  print(faults())
"""


@needs_glibc
def test_the_tunables_make_glibc_reuse_large_freed_buffers_without_page_faults(tmp_path):
  import os
  system = int(_run(tmp_path, FAULTS, {**os.environ, 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}))
  tuned = int(_run(tmp_path, FAULTS, {**os.environ, 'GLIBC_TUNABLES': host_malloc.merged('')}))
  # glibc's defaults mmap and unmap each buffer: 16,384 faults per buffer with 4 KiB pages
  # (160 in all where transparent huge pages are always on); tuned, the heap is reused.
  assert tuned * 10 < system, (tuned, system)
