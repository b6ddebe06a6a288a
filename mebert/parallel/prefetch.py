"""Device prefetch: a step's batch is on the devices before the step starts.

The trainer takes batch k from here, dispatches step k (asynchronously), then calls `fill()`, which
reads batches k+1..k+size from the host iterator and puts them on the devices while step k runs.
Dispatch alone already overlaps the next transfer with the running step, except after every step
that waits for the devices (log, eval, checkpoint): there, without batches put ahead, the devices
idle while the next batch is read and transferred.

Exact resume. The host iterator runs `size` batches ahead of what the loop consumed, so its own
state would skip them on resume. Each batch put ahead keeps the iterator's state from just before
it was read, and get_state() returns the oldest one's: the state after exactly the consumed batches.
set_state() drops what was put ahead. Checkpoints save this object where they saved the iterator
(mebert.train.distributed's handler calls get_state/set_state).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
from typing import Any, Callable, Iterator


@dataclasses.dataclass
class _Ahead:
  state: Any  # the host iterator's state before this batch was read
  host: Any  # the host batch (bookkeeping such as example_ids is read from it)
  device: Any  # put(host)


class DevicePrefetcher:
  """Yields (host batch, put(host batch)); up to `size` batches put ahead by fill()."""

  def __init__(self, source: Iterator, put: Callable[[Any], Any], size: int):
    if int(size) < 0:
      raise ValueError(f"data.device_prefetch={size} must be >= 0 (0 = no prefetch)")
    self.source = source
    self.size = int(size)
    self._put = put
    self._ahead: collections.deque[_Ahead] = collections.deque()

  def __iter__(self):
    return self

  def __next__(self) -> tuple[Any, Any]:
    if self._ahead:
      item = self._ahead.popleft()
      return item.host, item.device
    host = next(self.source)
    return host, self._put(host)

  def fill(self, limit: int | None = None) -> None:
    """Reads and puts batches until `size` are ahead, or `limit` (the steps still to run, so that
    nothing past the end is read)."""
    target = self.size if limit is None else min(self.size, max(int(limit), 0))
    while len(self._ahead) < target:
      # A copy: an iterator may hand out (and later mutate) its own state object.
      state = copy.deepcopy(self.source.get_state())
      host = next(self.source)
      self._ahead.append(_Ahead(state, host, self._put(host)))

  @property
  def ahead(self) -> int:
    return len(self._ahead)

  def get_state(self):
    return copy.deepcopy(self._ahead[0].state) if self._ahead else self.source.get_state()

  def set_state(self, state) -> None:
    self._ahead.clear()
    self.source.set_state(state)

  def start_prefetch(self) -> None:
    """grain's checkpoint restore calls this on the iterator it restored."""
    start = getattr(self.source, "start_prefetch", None)
    if start is not None:
      start()

  def close(self) -> None:
    self._ahead.clear()
    close = getattr(self.source, "close", None)
    if close is not None:
      close()
