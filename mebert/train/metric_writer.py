"""Scalars to TensorBoard (tensorboardX, no TensorFlow) and to metrics.jsonl, on process 0 only.

clu's metric_writers would import TensorFlow, so this is the small part of its interface we use.
"""

from __future__ import annotations

import json
import time

import jax
from etils import epath


class MetricWriter:

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self.workdir = epath.Path(workdir)
    self._tb = None
    if self.active:
      self.workdir.mkdir(parents=True, exist_ok=True)
      if not str(workdir).startswith("gs://"):
        from tensorboardX import SummaryWriter  # local event files; gs:// keeps metrics.jsonl only

        self._tb = SummaryWriter(logdir=str(self.workdir / "tensorboard"), flush_secs=30)
      self._jsonl = (self.workdir / "metrics.jsonl").open("a")

  def write_scalars(self, step: int, scalars: dict, prefix: str = "train") -> None:
    if not self.active:
      return
    record = {"step": int(step), "split": prefix, "time": round(time.time(), 3)}
    for key, value in scalars.items():
      record[key] = float(value)
      if self._tb is not None:
        self._tb.add_scalar(f"{prefix}/{key}", float(value), int(step))
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()

  def write_text(self, tag: str, text: str) -> None:
    if self.active and self._tb is not None:
      self._tb.add_text(tag, text, 0)

  def close(self) -> None:
    if not self.active:
      return
    if self._tb is not None:
      self._tb.close()
    self._jsonl.close()
