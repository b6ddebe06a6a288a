"""The selection rule of a run: which evaluation metric decides the best step, in which direction,
and how many evaluations without improvement end the run (early stopping).

Its state (best score and step, evaluations left) is recorded in WORKDIR/early_stopping.json
after every evaluation, before that step's checkpoint is written, together with the state after
each earlier evaluation. A resumed run takes the state as of the checkpoint it restored: an
evaluation whose checkpoint never reached the disk (a kill mid-write) is redone and counted once.
best.json names the best step and its metrics (what eval and predict choose by default).
"""

from __future__ import annotations

import dataclasses
import json
import logging

from etils import epath

from mebert.train.checkpoints import best_metric_mode
from mebert.train.records import numeric, write_json

log = logging.getLogger(__name__)

RECORD = "early_stopping.json"
BEST = "best.json"


@dataclasses.dataclass
class Selection:
  """Patience on one dev metric, in the direction `mode` says (max, min, or auto: by the metric's
  name, as the Checkpointer's BestN decides it). `best` is the selection score: the metric,
  negated when lower is better, so higher is always better."""

  metric: str
  mode: str
  patience: int = 0  # evaluations without improvement before stopping; 0 = never stop
  min_delta: float = 0.0
  best: float | None = None
  best_step: int = 0
  best_metrics: dict | None = None
  bad_evals: int = 0
  stopped: bool = False
  key: str = dataclasses.field(default="early_stopping.metric", repr=False)  # for errors
  history: dict = dataclasses.field(default_factory=dict, repr=False)  # eval step -> state

  def __post_init__(self):
    mode_key = self.key.replace("metric", "mode")  # early_stopping.mode, checkpoint.best_mode
    self.mode = best_metric_mode(self.metric, self.mode, key=mode_key)
    if self.patience < 0:
      raise ValueError(f"patience={self.patience} must be >= 0 (0 = never stop early)")

  @classmethod
  def from_config(cls, cfg) -> "Selection":
    """From a config section with metric, mode, patience and min_delta (fine-tuning's
    early_stopping)."""
    return cls(str(cfg.metric), str(cfg.mode), int(cfg.patience), float(cfg.min_delta))

  def score(self, metrics: dict) -> float:
    if self.metric not in metrics:
      raise ValueError(f"{self.key}={self.metric!r} is not an eval metric; available: "
                       f"{sorted(numeric(metrics))}")
    return float(metrics[self.metric]) * (1.0 if self.mode == "max" else -1.0)

  def update(self, step: int, metrics: dict) -> bool:
    """Takes the evaluation at `step`; returns whether it is the new best."""
    s = self.score(metrics)
    improved = self.best is None or s > self.best + self.min_delta
    if improved:
      self.best, self.best_step, self.best_metrics, self.bad_evals = s, step, metrics, 0
    else:
      self.bad_evals += 1
      self.stopped = self.patience > 0 and self.bad_evals >= self.patience
    # The state after this evaluation; the metrics only where they are the new best (a long
    # run's record would otherwise repeat the best metrics once per evaluation).
    entry = {k: v for k, v in self._state().items() if k != "best_metrics"}
    self.history[str(step)] = {**entry, "best_metrics": metrics} if improved else entry
    return improved

  def _state(self) -> dict:
    return {"best": self.best, "best_step": self.best_step, "best_metrics": self.best_metrics,
            "bad_evals": self.bad_evals, "stopped": self.stopped}

  def save(self, workdir: str) -> None:
    write_json(workdir, RECORD, {"metric": self.metric, "mode": self.mode,
                                 "patience": self.patience, "min_delta": self.min_delta,
                                 **self._state(), "history": self.history})

  def save_best(self, workdir: str) -> None:
    write_json(workdir, BEST, {"step": self.best_step, "metric": self.metric,
                               "metrics": self.best_metrics})

  def restore(self, workdir: str, step: int) -> "Selection":
    """This rule with the state it had at `step` (the checkpoint a run resumes from), from the
    workdir's record; unchanged when there is none."""
    path = epath.Path(workdir) / RECORD
    if not path.exists():
      return self
    record = json.loads(path.read_text())
    history = {k: v for k, v in (record.get("history") or {}).items() if int(k) <= step}
    if history:
      state = dict(history[max(history, key=int)])
      state["best_metrics"] = history.get(str(state["best_step"]), {}).get("best_metrics")
    elif "history" in record:  # every recorded evaluation came after the checkpoint
      state = {}
    else:  # a record written before histories were kept: its latest state
      state = {k: record[k] for k in ("best", "best_step", "best_metrics", "bad_evals", "stopped")
               if k in record}
    restored = dataclasses.replace(self, history=history, **state)
    if state:
      log.info("selection on %s at step %d: best %s at step %d, %d evaluations without "
               "improvement%s", self.metric, step, restored.best, restored.best_step,
               restored.bad_evals, " (stopped early)" if restored.stopped else "")
    return restored
