"""SIGTERM/SIGINT -> a flag the training loop polls, so a preempted run saves and exits 0.

orbax's own preemption detection (`jax.distributed` + the coordination service) only exists in
multi-process runs; a single-host run (a laptop, a SLURM job sent SIGTERM before its time
limit, Ctrl-C) needs this handler. The handler only sets a Python bool: the loop reads it once
per step without touching the device, saves the current step, waits for the write and raises
`Preempted`, which main turns into exit status 0.

A second signal while the save is in progress is not swallowed: it raises KeyboardInterrupt, so
a user who presses Ctrl-C twice still gets out (the last complete checkpoint stays valid).
"""

import signal
import threading
import types

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """Raised after a signal-triggered checkpoint of `step` is fully written."""

  def __init__(self, signal_name: str, step: int):
    self.signal_name, self.step = signal_name, step
    super().__init__(f'{signal_name} received: saved step {step}; run the same command to '
                     'resume from it.')


class PreemptionHandler:
  """Context manager installing SIGTERM/SIGINT handlers that set `requested` (and restore)."""

  def __init__(self):
    self.signal_name: str | None = None
    self._previous: dict[int, object] = {}

  @property
  def requested(self) -> bool:
    return self.signal_name is not None

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    del frame
    if self.requested:  # Second signal: the user insists.
      raise KeyboardInterrupt(f'second {signal.Signals(signum).name} during the preemption save')
    self.signal_name = signal.Signals(signum).name

  def __enter__(self) -> 'PreemptionHandler':
    # signal.signal only works in the main thread; elsewhere (e.g. a test runner thread) the
    # run simply has no preemption handling, which is the behaviour before this module.
    if threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous.clear()
