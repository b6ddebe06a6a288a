"""The one training loop: pretraining, fine-tuning and distillation all run through `run`.

A kind of training brings what is its own as a `Task` (its jitted step, its metrics, its
evaluation) plus a batch source and a restored or fresh state; the loop does the rest:
  - steps dispatched back to back: metrics stay on the devices as running sums (one jitted add per
    step), fetched only at log steps; the batch source (mebert.parallel.prefetch) puts the next
    batches on the devices while a step runs;
  - a log window every `log_every` steps, closed also before each evaluation and checkpoint so
    that its throughput is training alone: progress bar with ETA and tokens/s (process 0),
    TensorBoard and metrics.jsonl (MetricWriter), one log line;
  - evaluation every `eval_every` steps and at the last step; a `Selection` rule records the best
    step (best.json, kept by the Checkpointer's BestN) and stops early after its patience;
  - checkpoints every `save_every` steps, at the end, on stopping and on preemption: the latest N
    plus the best (LatestN + BestN: the latest is never deleted);
  - non-finite steps: the step skips their updates itself (train.steps.guarded_update); the loop
    stops after `max_nonfinite_in_row` in a row, at most one step late (`NonfiniteWatch`);
  - SIGTERM/SIGINT, or JAX's preemption sync point under jax.distributed: saves the current step
    and exits 0 (`StopSignal`); the same command resumes from it;
  - a jax.profiler trace of chosen steps (WORKDIR/profile); with `guard_host_sync` any read of a
    device value while steps are dispatched raises (mebert.train.host_sync).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import tqdm
from etils import epath
from tqdm.contrib.logging import logging_redirect_tqdm

from mebert.train import distributed, host_sync
from mebert.train.metric_writer import MetricWriter
from mebert.train.preemption import StopSignal
from mebert.train.records import numeric
from mebert.train.selection import Selection

log = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
  """The run stopped itself (too many non-finite steps); the last good checkpoint is intact."""


class Task(abc.ABC):
  """What one kind of training brings to the loop."""

  name = "train"  # the progress bar's label
  progress_keys: tuple[str, ...] = ("loss",)  # train scalars shown on the bar

  @abc.abstractmethod
  def step(self, state, batch) -> tuple[Any, dict]:
    """The jitted step: (state, metrics), metrics a dict of device scalars, summable over steps,
    with `nonfinite_in_row` (the state's counter), `tokens` and `real_tokens`."""

  @abc.abstractmethod
  def evaluate(self, state) -> dict:
    """Dev metrics of the state (waits for the devices: called at evaluation steps only)."""

  @abc.abstractmethod
  def train_scalars(self, sums: dict, step: int) -> dict:
    """A log window's scalars from its summed metrics (host numbers)."""

  def after_eval(self, state, metrics: dict, selection: Selection | None) -> tuple[Any, dict]:
    """A hook after each evaluation (fine-tuning's reduce-on-plateau): (state, eval scalars to
    log besides the metrics)."""
    del metrics, selection
    return state, {}

  def observe_batch(self, step: int, host_batch) -> None:
    """Sees each host batch before its step (pretraining's example-id record)."""

  def checkpoint_view(self, state):
    """What the checkpoint writes for the state."""
    return state

  def context(self):
    """Entered around the whole loop (the mesh and its logical axis rules)."""
    return contextlib.nullcontext()


@dataclasses.dataclass(frozen=True)
class Cadence:
  num_steps: int
  log_every: int
  eval_every: int  # and at the last step
  save_every: int  # and at the last step, on early stopping and on preemption
  save_with_eval: bool = False  # also at every evaluation (the best step must be on disk)
  max_nonfinite_in_row: int = 10
  profile: tuple[int, int] | None = None  # [start, stop) steps traced
  guard_host_sync: bool = False

  @classmethod
  def from_config(cls, train_config, *, num_steps: int, eval_every: int, save_every: int,
                  save_with_eval: bool = False) -> "Cadence":
    """The cadence from a config's `train` section (log_every, max_nonfinite_in_row,
    profile_steps, guard_host_sync) and the run's own step counts."""
    values = {"train.num_steps": num_steps, "train.log_every": int(train_config.log_every),
              "eval.every_steps": eval_every, "checkpoint.every_steps": save_every,
              "train.max_nonfinite_in_row": int(train_config.max_nonfinite_in_row)}
    for key, value in values.items():
      if value <= 0:
        raise ValueError(f"{key}={value} must be > 0")
    return cls(num_steps, values["train.log_every"], eval_every, save_every, save_with_eval,
               values["train.max_nonfinite_in_row"],
               parse_profile_steps(str(train_config.get("profile_steps", ""))),
               bool(train_config.get("guard_host_sync", False)))


def parse_profile_steps(text: str) -> tuple[int, int] | None:
  """"START,STOP" -> the steps START+1..STOP traced ([START, STOP) counted from 0); "START" -> one
  step; "" -> none."""
  parts = [p.strip() for p in text.split(",") if p.strip()]
  try:
    values = [int(p) for p in parts]
  except ValueError:
    values = []
  if not parts:
    return None
  if len(values) == 1:
    values.append(values[0] + 1)
  if len(values) != 2 or not 0 <= values[0] < values[1]:
    raise ValueError(f"train.profile_steps={text!r} is not START,STOP with 0 <= START < STOP")
  return values[0], values[1]


@dataclasses.dataclass
class Outcome:
  step: int  # the last step run (the restored one when none ran)
  state: Any
  last_eval: dict | None  # the evaluation at `step`, when this run made one
  selection: Selection | None
  train_s: float = 0.0  # wall time of the log windows (training alone)
  tokens: float = 0.0
  real_tokens: float = 0.0


class NonfiniteWatch:
  """Each step's count of non-finite steps in a row, read without stalling the devices.

  Reading a step's counter right after dispatching it would make every step wait for the devices.
  Instead its copy to the host starts at once and it is read after the next step is dispatched
  (so the devices still have a step queued), or at once at log, evaluation and checkpoint steps,
  which wait for the devices anyway: the run stops at most one step after the limit is reached.
  The reads happen at the same steps on every process, whatever the timing, so under
  jax.distributed all processes stop together.
  """

  def __init__(self, limit: int):
    self.limit = limit
    self._pending = None  # (step, counter) not read yet

  def push(self, step: int, counter) -> tuple[int, int] | None:
    """Takes `step`'s counter and reads the previous one: (step, count) if that one is at the
    limit, else None."""
    counter.copy_to_host_async()
    found = self.flush()
    self._pending = (step, counter)
    return found

  def flush(self) -> tuple[int, int] | None:
    """Reads the pending counter now (waiting for its step): (step, count) at the limit, else
    None."""
    if self._pending is None:
      return None
    (step, counter), self._pending = self._pending, None
    count = int(counter)
    return (step, count) if count >= self.limit else None


# One dispatch per step for all the metric sums (jnp.add over the tree would be one per metric).
_add_sums = jax.jit(lambda sums, metrics: jax.tree.map(jnp.add, sums, metrics))


class _Window:
  """The metrics of the steps since the last log, summed on the devices."""

  def __init__(self, step: int):
    self.sums, self.first_step, self.start = None, step, time.perf_counter()

  def add(self, metrics: dict) -> None:
    self.sums = metrics if self.sums is None else _add_sums(self.sums, metrics)


def _close_quietly(*closers) -> None:
  """Closes after a failure without hiding it (orbax's background threads must not outlive the
  interpreter, or their traceback, not the failure's, becomes the last line printed)."""
  for close in closers:
    try:
      close()
    except Exception as e:  # noqa: BLE001 - the failure that is propagating matters more
      log.warning("while closing after an error: %s", e)


class _Profiler:
  def __init__(self, steps: tuple[int, int] | None, workdir: str):
    self.steps, self.dir, self.active = steps, str(epath.Path(workdir) / "profile"), False

  def before(self, step: int) -> None:
    if self.steps and step == self.steps[0]:
      jax.profiler.start_trace(self.dir)
      self.active = True

  def after(self, step: int) -> None:
    if self.active and step >= self.steps[1]:
      self.stop()

  def stop(self) -> None:
    if self.active:
      self.active = False
      jax.profiler.stop_trace()
      log.info("profiler trace of steps %d-%d in %s", self.steps[0] + 1, self.steps[1], self.dir)


class _Preempted(Exception):
  """The current step is saved after a preemption notice: close, then exit 0."""


def run(task: Task, state, *, start_step: int, batches, checkpointer, cadence: Cadence,
        selection: Selection | None, workdir: str, config_dict: dict,
        save_batches: bool = False) -> Outcome:
  """Trains from `start_step` to cadence.num_steps (or an early stop); returns the outcome.

  `batches` yields (host batch, device batch) and may have `fill(limit)` (prefetch) and
  `close()`; with `save_batches` it is checkpointed with the state (get_state/set_state), else
  its position is the step's. `checkpointer` (a train.checkpoints.Checkpointer) is closed here.
  Raises TrainingStopped after too many non-finite steps, SystemExit(0) after a preemption save.
  """
  loop = _Loop(task, Outcome(start_step, state, None, selection), batches, checkpointer, cadence,
               workdir, config_dict, save_batches)
  preempted = None
  try:
    with (task.context(), StopSignal(distributed.runtime_started()) as loop.stop,
          logging_redirect_tqdm()):
      loop.run()
  except _Preempted as e:
    preempted = e
  except BaseException:
    _close_quietly(*loop.closers)
    raise
  for close in loop.closers:  # a failed write of the last checkpoint raises here
    close()
  if preempted is not None:
    log.warning("%s", preempted)
    raise SystemExit(0)
  return loop.out


class _Loop:
  """One run of the loop: its writers, its log window and the steps."""

  def __init__(self, task, out, batches, ckpt, cadence, workdir, config_dict, save_batches):
    self.task, self.out, self.batches, self.ckpt, self.cadence = task, out, batches, ckpt, cadence
    self.workdir, self.config_dict, self.save_batches = workdir, config_dict, save_batches
    self.writer = MetricWriter(workdir)
    self.progress = tqdm.tqdm(total=cadence.num_steps, initial=out.step, desc=task.name,
                              unit="step", disable=jax.process_index() != 0, dynamic_ncols=True)
    self.profiler = _Profiler(cadence.profile, workdir)
    self.watch = NonfiniteWatch(cadence.max_nonfinite_in_row)
    self.window = _Window(out.step)
    self.stop: StopSignal | None = None  # entered by run()
    self.closers = [self.profiler.stop, ckpt.close, self.writer.close, self.progress.close,
                    getattr(batches, "close", lambda: None)]

  def run(self) -> None:
    out, cadence, selection = self.out, self.cadence, self.out.selection
    while out.step < cadence.num_steps and not (selection is not None and selection.stopped):
      in_row = self.dispatch()
      step = out.step
      self.profiler.after(step)
      self.progress.update(1)
      preempted = self.stop.check(step)
      eval_now = step % cadence.eval_every == 0 or step == cadence.num_steps
      save_now = (step % cadence.save_every == 0 or step == cadence.num_steps or preempted
                  or (eval_now and cadence.save_with_eval))
      log_now = step % cadence.log_every == 0 or eval_now or save_now
      stopped = self.watch.push(step, in_row)
      if log_now and stopped is None:
        stopped = self.watch.flush()  # this step waits for the devices anyway
      if stopped is not None:
        self.log_window()
        raise TrainingStopped(
            f"{stopped[1]} non-finite (NaN/Inf) steps in a row at step {stopped[0]} "
            f"(train.max_nonfinite_in_row={cadence.max_nonfinite_in_row}); their updates were "
            f"skipped and the last checkpoint in {epath.Path(self.workdir) / 'checkpoints'} is "
            "intact")
      if log_now:
        self.log_window()  # a window never spans an evaluation or a checkpoint: not training
      improved = self.evaluate() if eval_now else False
      if save_now or (selection is not None and selection.stopped):
        self.save(improved)
      if improved:
        selection.save_best(self.workdir)
      if self.window.sums is None:
        self.window = _Window(step)  # the next window's clock starts after evaluation and save
      if preempted:
        raise _Preempted(f"{self.stop.received} received: saved step {step}, exiting")

  def dispatch(self):
    """Runs one step: its batch, the step itself, the next batches put on the devices, its
    metrics added on the devices; returns its non-finite counter (a device array)."""
    out, cadence = self.out, self.cadence
    self.profiler.before(out.step)
    with host_sync.no_host_reads(cadence.guard_host_sync):
      host_batch, device_batch = next(self.batches)
      self.task.observe_batch(out.step + 1, host_batch)
      with jax.profiler.StepTraceAnnotation("train", step_num=out.step):
        out.state, metrics = self.task.step(out.state, device_batch)
      out.step += 1
      fill = getattr(self.batches, "fill", None)
      if fill is not None:
        fill(limit=cadence.num_steps - out.step)  # while this step runs
      in_row = metrics.pop("nonfinite_in_row")
      self.window.add(metrics)
    out.last_eval = None
    return in_row

  def log_window(self) -> None:
    window, out, step = self.window, self.out, self.out.step
    if window.sums is None:
      return
    host = jax.device_get(window.sums)  # waits for the window's last step
    # Timed after the fetch: steps are dispatched asynchronously, so the clock at the last
    # dispatch undercounts the window by whatever the devices had still queued.
    elapsed = max(time.perf_counter() - window.start, 1e-9)
    tokens, real = float(host.get("tokens", 0.0)), float(host.get("real_tokens", 0.0))
    out.train_s, out.tokens, out.real_tokens = (out.train_s + elapsed, out.tokens + tokens,
                                                out.real_tokens + real)
    scalars = self.task.train_scalars(host, step)
    scalars.update(tokens_per_s=tokens / elapsed, real_tokens_per_s=real / elapsed,
                   steps_per_s=(step - window.first_step) / elapsed)
    self.writer.write_scalars(step, scalars)
    shown = {k: f"{scalars[k]:.4g}" for k in self.task.progress_keys if k in scalars}
    self.progress.set_postfix({**shown, "tok/s": f"{scalars['tokens_per_s']:.0f}"},
                              refresh=False)
    log.info("step %d/%d %s", step, self.cadence.num_steps,
             " ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
    window.sums = None

  def evaluate(self) -> bool:
    """Evaluates the current state; returns whether the selection rule found a new best."""
    out, selection, step = self.out, self.out.selection, self.out.step
    out.last_eval = result = self.task.evaluate(out.state)
    self.writer.write_scalars(step, numeric(result), prefix="eval")
    improved = False
    if selection is not None:
      improved = selection.update(step, result)
      log.info("eval step %d: %s=%.4f (best %.4f at step %d)%s", step, selection.metric,
               result[selection.metric], abs(selection.best), selection.best_step,
               "; stopping early" if selection.stopped else "")
      selection.save(self.workdir)  # before the checkpoint: see mebert.train.selection
    out.state, extra = self.task.after_eval(out.state, result, selection)
    if extra:
      self.writer.write_scalars(step, extra, prefix="eval")
    return improved

  def save(self, improved: bool) -> None:
    out = self.out
    # Metrics only on improvements: BestN (on the selection's metric, in its direction) then keeps
    # the first step that reached the best score (as best.json says), never a later tie; LatestN
    # keeps the resume point.
    metrics = numeric(out.last_eval) if improved else None
    self.ckpt.save(out.step, self.task.checkpoint_view(out.state),
                   self.batches if self.save_batches else None, self.config_dict,
                   metrics=metrics, force=True)
