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
    stops after `max_nonfinite_in_row` in a row (`NonfiniteWatch`);
  - SIGTERM/SIGINT, or JAX's preemption sync point under jax.distributed: saves the current step
    and exits 0 (`StopSignal`); the same command resumes from it;
  - a jax.profiler trace of chosen steps (WORKDIR/profile); with `guard_host_sync` any read of a
    device value while steps are dispatched raises (mebert.train.host_sync).
"""

from __future__ import annotations

import abc
import collections
import contextlib
import dataclasses
import logging
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import tqdm
from etils import epath
from tqdm.contrib.logging import logging_redirect_tqdm

from mebert.train import distributed, host_sync
from mebert.train.metric_writer import MetricWriter
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


class NonfiniteWatch:
  """Each step's count of non-finite steps in a row, read without stalling the devices.

  Reading a step's counter right after dispatching it would make every step wait for the devices.
  Instead its copy to the host starts at once, and it is read once it is ready, or at the latest
  after the next step is dispatched (so the devices still have a step queued): the run stops at
  most one step after the limit is reached. With synchronous dispatch (XLA:CPU on one device, see
  mebert/host_memory.py) every counter is ready at once and the stop is at the limit's step.
  """

  def __init__(self, limit: int):
    self.limit = limit
    self._pending: collections.deque = collections.deque()  # (step, counter)

  def push(self, step: int, counter) -> tuple[int, int] | None:
    """Takes `step`'s counter; returns (step, count) of the first step at the limit, else None."""
    counter.copy_to_host_async()
    self._pending.append((step, counter))
    while self._pending:
      seen, value = self._pending[0]
      if seen == step and not value.is_ready():
        break  # this step's own counter is read next time, after the next step is dispatched
      self._pending.popleft()
      count = int(value)
      if count >= self.limit:
        return seen, count
    return None


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
  out = Outcome(start_step, state, None, selection)
  writer = MetricWriter(workdir)
  progress = tqdm.tqdm(total=cadence.num_steps, initial=start_step, desc=task.name, unit="step",
                       disable=jax.process_index() != 0, dynamic_ncols=True)
  profiler = _Profiler(cadence.profile, workdir)
  closers = [profiler.stop, checkpointer.close, writer.close, progress.close,
             getattr(batches, "close", lambda: None)]
  preempted = None
  try:
    with (task.context(), StopSignal(distributed.runtime_started()) as stop,
          logging_redirect_tqdm()):
      _steps(task, out, batches, checkpointer, cadence, writer, progress, profiler, stop,
             config_dict, save_batches, workdir)
  except _Preempted as e:
    preempted = e
  except BaseException:
    _close_quietly(*closers)
    raise
  for close in closers:  # a failed write of the last checkpoint raises here
    close()
  if preempted is not None:
    log.warning("%s", preempted)
    raise SystemExit(0)
  return out


def _steps(task, out, batches, ckpt, cadence, writer, progress, profiler, stop, config_dict,
           save_batches, workdir) -> None:
  selection, step, state = out.selection, out.step, out.state
  watch = NonfiniteWatch(cadence.max_nonfinite_in_row)
  fill = getattr(batches, "fill", None)
  window = _Window(step)

  def log_window():
    nonlocal window
    if window.sums is None:
      return
    host = jax.device_get(window.sums)  # waits for the window's last step
    # Timed after the fetch: steps are dispatched asynchronously, so the clock at the last
    # dispatch undercounts the window by whatever the devices had still queued.
    elapsed = max(time.perf_counter() - window.start, 1e-9)
    tokens, real = float(host.get("tokens", 0.0)), float(host.get("real_tokens", 0.0))
    out.train_s, out.tokens, out.real_tokens = (out.train_s + elapsed, out.tokens + tokens,
                                                out.real_tokens + real)
    scalars = task.train_scalars(host, step)
    scalars.update(tokens_per_s=tokens / elapsed, real_tokens_per_s=real / elapsed,
                   steps_per_s=(step - window.first_step) / elapsed)
    writer.write_scalars(step, scalars)
    progress.set_postfix({**{k: f"{scalars[k]:.4g}" for k in task.progress_keys if k in scalars},
                          "tok/s": f"{scalars['tokens_per_s']:.0f}"}, refresh=False)
    log.info("step %d/%d %s", step, cadence.num_steps,
             " ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
    window.sums = None

  while step < cadence.num_steps and not (selection is not None and selection.stopped):
    profiler.before(step)
    with host_sync.no_host_reads(cadence.guard_host_sync):
      host_batch, device_batch = next(batches)
      task.observe_batch(step + 1, host_batch)
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = task.step(state, device_batch)
      step += 1
      if fill is not None:
        fill(limit=cadence.num_steps - step)  # while this step runs
      in_row = metrics.pop("nonfinite_in_row")
      window.add(metrics)
    out.step, out.state, out.last_eval = step, state, None
    stopped = watch.push(step, in_row)
    if stopped is not None:
      log_window()
      raise TrainingStopped(
          f"{stopped[1]} non-finite (NaN/Inf) steps in a row at step {stopped[0]} "
          f"(train.max_nonfinite_in_row={cadence.max_nonfinite_in_row}); their updates were "
          f"skipped and the last checkpoint in {epath.Path(workdir) / 'checkpoints'} is intact")
    profiler.after(step)
    progress.update(1)
    preempted = stop.check(step)
    eval_now = step % cadence.eval_every == 0 or step == cadence.num_steps
    save_now = (step % cadence.save_every == 0 or step == cadence.num_steps or preempted
                or (eval_now and cadence.save_with_eval))
    if step % cadence.log_every == 0 or eval_now or save_now:
      log_window()  # a window never spans an evaluation or a checkpoint: they are not training
    improved = False
    if eval_now:
      out.last_eval = result = task.evaluate(state)
      writer.write_scalars(step, numeric(result), prefix="eval")
      if selection is not None:
        improved = selection.update(step, result)
        log.info("eval step %d: %s=%.4f (best %.4f at step %d)%s", step, selection.metric,
                 result[selection.metric], abs(selection.best), selection.best_step,
                 "; stopping early" if selection.stopped else "")
        selection.save(workdir)  # before the checkpoint: see mebert.train.selection
        save_now = save_now or selection.stopped
      state, extra = task.after_eval(state, result, selection)
      out.state = state
      if extra:
        writer.write_scalars(step, extra, prefix="eval")
    if save_now:
      # Metrics only on improvements: BestN then keeps the first step that reached the best
      # score (as best.json says), never a later tie; LatestN keeps the resume point.
      metrics = ({"selection_score": selection.best, **numeric(out.last_eval)} if improved
                 else None)
      ckpt.save(step, task.checkpoint_view(state), batches if save_batches else None, config_dict,
                metrics=metrics, force=True)
    if improved:
      selection.save_best(workdir)
    if window.sums is None:
      window = _Window(step)  # the next window's clock starts after the evaluation and save
    if preempted:
      raise _Preempted(f"{stop.received} received: saved step {step}, exiting")
