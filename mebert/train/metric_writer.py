"""Scalars to TensorBoard and to metrics.jsonl, on process 0 only, in a local or gs:// workdir.

TensorBoard events come from tensorboardX's SummaryWriter as it comes: it writes local files, and
gs:// ones through google-cloud-storage (each flush uploads the event file again; scalars keep it
small). clu's metric writers would do the same but import TensorFlow (or torch) to write events.
metrics.jsonl is appended locally; a gs:// object cannot be appended to, so there the file is
rewritten whole, at most every `flush_secs` and at close.
"""

from __future__ import annotations

import json
import time

import jax
from etils import epath


def _is_local(path: str) -> bool:
  return "://" not in str(path)


class MetricWriter:

  def __init__(self, workdir: str, flush_secs: float = 30.0):
    self.active = jax.process_index() == 0
    self.workdir = epath.Path(workdir)
    self._flush_secs = flush_secs
    self._tb = None
    if not self.active:
      return
    from tensorboardX import SummaryWriter

    self.workdir.mkdir(parents=True, exist_ok=True)
    self._tb = SummaryWriter(logdir=str(self.workdir / "tensorboard"), flush_secs=int(flush_secs))
    self._path = self.workdir / "metrics.jsonl"
    if _is_local(workdir):
      self._jsonl, self._lines = self._path.open("a"), None
    else:  # whole-file rewrites: keep what a resumed run wrote before
      self._jsonl = None
      self._lines = self._path.read_text().splitlines(keepends=True) if self._path.exists() else []
      self._written = time.monotonic()

  def write_scalars(self, step: int, scalars: dict, prefix: str = "train") -> None:
    if not self.active:
      return
    record = {"step": int(step), "split": prefix, "time": round(time.time(), 3)}
    for key, value in scalars.items():
      record[key] = float(value)
      self._tb.add_scalar(f"{prefix}/{key}", float(value), int(step))
    line = json.dumps(record) + "\n"
    if self._jsonl is not None:
      self._jsonl.write(line)
      self._jsonl.flush()
    else:
      self._lines.append(line)
      if time.monotonic() - self._written >= self._flush_secs:
        self._rewrite()

  def _rewrite(self) -> None:
    self._path.write_text("".join(self._lines))
    self._written = time.monotonic()

  def write_text(self, tag: str, text: str) -> None:
    if self.active:
      self._tb.add_text(tag, text, 0)

  def close(self) -> None:
    if not self.active:
      return
    self._tb.close()
    if self._jsonl is not None:
      self._jsonl.close()
    else:
      self._rewrite()
