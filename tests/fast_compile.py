"""Compiling for tests that check a program's structure, not its last bits of arithmetic.

Most of such a test's time is XLA:CPU compiling it, and most of a compile is LLVM generating
machine code. At LLVM's lowest optimisation level the test-sized models compile in about half
the time (2026-12-07, one process, cache off: GoogLeNet's init 13.0 -> 6.0 s and gradient 11.5
-> 7.6 s; ResNeSt-101 with one block per stage 7.3 -> 3.8 s and 6.1 -> 3.4 s). XLA's optimised
HLO and the memory it plans do not depend on that level (the trainer's remat step for a
ResNet-50 with two blocks per stage on 2 devices: the same compiled text and memory analysis at
both), so tests of buffers, fusions, collectives, shapes, finiteness and dead parameters lose
nothing. Numerical parity tests keep the default level: the code users run is what they compare.

Subprocesses that test control flow (fault tolerance, several hosts, the bench's child runs) get
the same level through XLA_FLAGS: a 6-step run of the fault-injection runner took 14.9 -> 8.6 s.
"""

OPTIONS = {'xla_backend_optimization_level': 0}
XLA_FLAG = '--xla_backend_optimization_level=0'  # The same, for a subprocess's XLA_FLAGS.


def jit(fn, **kwargs):
  """jax.jit compiling at OPTIONS (imports jax only here: multihost workers import this first)."""
  import jax
  return jax.jit(fn, compiler_options=OPTIONS, **kwargs)
