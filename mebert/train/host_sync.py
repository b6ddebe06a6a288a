"""A debug guard for the train loop's hot path: reading a device array's value there fails.

Between log steps the pretraining loop must never wait for the devices. A stray `float(loss)` or
`jax.device_get(metrics)` makes Python block until the running step has finished, so the next
batch's transfer and dispatch stop overlapping it, and the device idles once per step. With
`train.guard_host_sync=True` the loop reads, dispatches and accumulates each step inside
`no_host_reads()`, where such a read raises HostSyncError (log, eval and checkpoint work stays
outside: those steps are allowed to wait).

Two mechanisms, because JAX's own transfer guard is blind on CPU, where the tests run: a CPU array
is read without a copy, which JAX does not count as a device-to-host transfer (jax-ml/jax#16602).
  - `jax.transfer_guard_device_to_host("disallow_explicit")`: GPU and TPU, every read;
  - a check in jax.Array's value property, which float(), int(), bool(), format(), .tolist(),
    jax.device_get and np.asarray of a multi-device array all go through. Only the guarded thread is
    checked (Orbax's and grain's threads read arrays for their own reasons).
The one read neither sees: np.asarray of a single-device CPU array, which reads the buffer directly.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import jax

log = logging.getLogger(__name__)


class HostSyncError(RuntimeError):
  """A device array was read on the host inside the train loop's no-host-read region."""


_local = threading.local()
_install_lock = threading.Lock()
_installed: bool | None = None  # None: not tried yet; False: this JAX has no hookable property


def _install_value_check() -> bool:
  global _installed
  with _install_lock:
    if _installed is not None:
      return _installed
    try:
      from jax._src import array as array_lib  # pylint: disable=g-import-not-at-top

      original = array_lib.ArrayImpl.__dict__["_value"]
      if not isinstance(original, property):
        raise TypeError(f"ArrayImpl._value is a {type(original).__name__}")
    except (ImportError, AttributeError, KeyError, TypeError) as e:
      log.warning("no host-read check on CPU arrays with this JAX (%s); only JAX's transfer guard, "
                  "which sees GPU/TPU reads, is on", e)
      _installed = False
      return False

    def checked(self):
      if getattr(_local, "active", False):
        raise HostSyncError(
            f"read of a {self.dtype}{list(self.shape)} device array inside the train loop's "
            "no-host-read region (train.guard_host_sync=True): it makes every step wait for the "
            "devices; keep values on the devices and fetch them at log steps")
      return original.fget(self)

    array_lib.ArrayImpl._value = property(checked, doc=original.__doc__)
    _installed = True
    return True


@contextlib.contextmanager
def no_host_reads(enabled: bool = True):
  """Inside (when enabled), reading a device array's value in this thread raises."""
  if not enabled:
    yield
    return
  _install_value_check()
  previous = getattr(_local, "active", False)
  _local.active = True
  try:
    with jax.transfer_guard_device_to_host("disallow_explicit"):
      yield
  finally:
    _local.active = previous
