"""oneDNN's convolutions for XLA:CPU: builds, caches and registers the FFI handlers.

XLA:CPU runs a kxk convolution on Eigen, 1.15-1.7x slower than oneDNN (PyTorch's CPU kernels)
on ResNet layer shapes, the backward pass most (`python -m resnet_jax.bench convs`,
docs/performance.md). `onednn_conv.cc` calls oneDNN's convolution primitives through XLA's FFI;
this module compiles it on first use with the host's C++ compiler against the oneDNN of the
`onednn` extra (`pip install -e ".[onednn]"`: oneDNN's own wheels, headers and shared library)
or of the system (Debian's libdnnl-dev), caches the library under
~/.cache/resnet_jax/kernels (keyed by the source, jaxlib and oneDNN paths), loads it and
registers its three targets. `status()` says whether that worked and, if not, why: the
convolution then stays on XLA's own lowering.
"""

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import jax
import jaxlib

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'onednn_conv.cc')
TARGETS = {
  'forward': 'ResnetJaxOnednnConvForward',
  'backward_data': 'ResnetJaxOnednnConvBackwardData',
  'backward_weights': 'ResnetJaxOnednnConvBackwardWeights',
}
_lock = threading.Lock()


def _cache_dir() -> str:
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'resnet_jax', 'kernels')


def find_onednn() -> tuple[str, str] | None:
  """(include dir, lib dir) of a oneDNN with C++ headers and libdnnl.so, or None.

  Searched: this Python's prefix (where the wheels of the `onednn` extra put them), then /usr.
  """
  for prefix in (sys.prefix, '/usr', '/usr/local'):
    include = os.path.join(prefix, 'include')
    if not os.path.isfile(os.path.join(include, 'oneapi', 'dnnl', 'dnnl.hpp')):
      continue
    for lib in ('lib', 'lib64', 'lib/x86_64-linux-gnu'):
      libdir = os.path.join(prefix, lib)
      if os.path.exists(os.path.join(libdir, 'libdnnl.so')):
        return include, libdir
  return None


def _build(include: str, libdir: str) -> str:
  """The compiled handler library's path, compiling it if this source and setup are new."""
  compiler = shutil.which(os.environ.get('CXX', 'g++'))
  if compiler is None:
    raise RuntimeError('no C++ compiler (g++, or $CXX) on PATH')
  with open(SOURCE, 'rb') as f:
    source = f.read()
  key = hashlib.sha256(b'\0'.join([
    source, jaxlib.__version__.encode(), include.encode(), libdir.encode(), compiler.encode(),
  ])).hexdigest()[:16]
  out = os.path.join(_cache_dir(), key, 'onednn_conv.so')
  if os.path.exists(out):
    return out
  os.makedirs(os.path.dirname(out), exist_ok=True)
  # Another process may build the same library at once: each writes its own file, then renames.
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(out))
  os.close(fd)
  cmd = [compiler, '-O2', '-std=c++17', '-shared', '-fPIC', '-fopenmp', SOURCE,
         '-I', jax.ffi.include_dir(), '-I', include, '-L', libdir, '-ldnnl',
         f'-Wl,-rpath,{libdir}', '-o', tmp]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0:
    os.unlink(tmp)
    raise RuntimeError(f'compiling {SOURCE} failed:\n{proc.stderr[-2000:]}')
  os.replace(tmp, out)
  return out


@functools.cache
def _load() -> tuple[bool, str]:
  found = find_onednn()
  if found is None:
    return False, ('oneDNN not found (headers oneapi/dnnl/dnnl.hpp and libdnnl.so under '
                   f'{sys.prefix}, /usr or /usr/local): pip install -e ".[onednn]"')
  try:
    path = _build(*found)
    library = ctypes.CDLL(path)
    for target in TARGETS.values():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, target)),
                                  platform='cpu')
  except (OSError, RuntimeError, AttributeError) as e:
    return False, f'oneDNN convolutions unavailable: {e}'
  return True, path


def status() -> tuple[bool, str]:
  """(True, library path) once the handlers are registered, else (False, why not)."""
  with _lock:
    return _load()


# dnnl_types.h's dnnl_cpu_isa_avx512_core_bf16: the ISA bits of AVX-512 with its bf16 dot
# products; the AMX ISAs contain them.
_ISA_AVX512_CORE_BF16 = 0xE7


@functools.cache
def native_bf16() -> tuple[bool, str]:
  """(whether oneDNN runs bf16 convolutions on this CPU's own bf16 dot products, its ISA).

  Without avx512_bf16 or AMX oneDNN emulates bf16 or has no bf16 convolution at all, slower
  than float32 or an error at the first call: bf16 then stays on XLA.
  """
  found = find_onednn()
  if found is None or not status()[0]:
    return False, 'oneDNN unavailable'
  library = ctypes.CDLL(os.path.join(found[1], 'libdnnl.so'))
  isa = int(library.dnnl_get_effective_cpu_isa())
  native = isa & _ISA_AVX512_CORE_BF16 == _ISA_AVX512_CORE_BF16
  return native, f'oneDNN CPU ISA {isa:#x} ({"with" if native else "without"} avx512_bf16)'
