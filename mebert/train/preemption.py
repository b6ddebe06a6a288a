"""Preemption notices (SIGTERM, SIGINT, or JAX's preemption sync point): the training loop saves
the current step and exits 0, and the same command resumes from it."""

from __future__ import annotations

import signal


class StopSignal:
  """A preemption notice: the loop saves a checkpoint at the current step and exits cleanly.

  One process: SIGTERM/SIGINT set a flag. Under jax.distributed: JAX's preemption service takes
  SIGTERM (on any one host is enough), tells every host, and `reached_preemption_sync_point` turns
  True at the same step on all of them, so all save that step together; Python's handlers stay out
  of its way, since one host saving a step the others never reach would hang the collective save.
  """

  def __init__(self, distributed_runtime: bool = False):
    self.received = None
    self._distributed = distributed_runtime
    self._previous = {}

  def __enter__(self):
    if not self._distributed:
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name

  def check(self, step: int) -> bool:
    """Called after every step, on every process: whether to save `step` and exit."""
    if self._distributed:
      from jax.experimental import multihost_utils

      if multihost_utils.reached_preemption_sync_point(step):
        self.received = "SIGTERM (JAX preemption sync point)"
    return self.received is not None

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
