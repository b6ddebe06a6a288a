"""Orbax checkpoints: async saves, exact resume, keep-latest-and-best, damaged-step fallback.

A step directory WORKDIR/checkpoints/<step>/ holds up to four items:
  params  - the model parameters (all a consumer needs: eval, predict, export, fine-tune init);
  opt     - step, optimizer state and non-finite counters (training resumes from params + opt);
  data    - the grain iterator state, one file per process, so the data stream resumes exactly;
  config  - the resolved config as JSON.
Imported models (mebert.interop) write params and config only.

A step that a training run finds unreadable on resume (and falls back past) is moved aside to
WORKDIR/checkpoints/<step>.damaged (or <step>.damaged-<n>), never deleted: Orbax would otherwise
keep it as the latest step and refuse to save that step number again. Orbax neither lists such a
directory as a step (its step names are digits only) nor removes it as an unfinished one (those
carry ".orbax-checkpoint-tmp"; on a bucket, they lack the commit file that a finished step, moved
or not, keeps). Read-only consumers (eval, predict, init from a workdir) only skip damaged steps.
"""

from __future__ import annotations

import errno
import logging
import os
import re

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from mebert.train import distributed

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be used, or cannot be written; the message names the step and
  path."""


_WRITE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO)


def _write_failure(e: BaseException) -> str:
  """The cause of a failed write in a few words: tensorstore's messages carry a whole JSON spec,
  so they are reduced to the operating system's reason (e.g. 'No space left on device') when
  one is named, and cut short otherwise."""
  text = str(e)
  for code in _WRITE_ERRNOS:
    if getattr(e, "errno", None) == code and getattr(e, "strerror", None):
      return f"{e.strerror} ({errno.errorcode[code]})"
    if os.strerror(code) in text:
      return f"{os.strerror(code)} ({errno.errorcode[code]})"
  return re.sub(r"\s+", " ", f"{type(e).__name__}: {text}")[:300]


def checkpoint_dir(workdir: str) -> epath.Path:
  # Orbax refuses relative local paths: `--workdir=runs/tiny` is runs/tiny in the current folder.
  if "://" not in str(workdir):
    workdir = os.path.abspath(workdir)
  return epath.Path(workdir) / "checkpoints"


BEST_MODES = ("auto", "max", "min")
# Metrics where lower is better, by name: losses and errors. Anything else (accuracy, F1,
# correlation, a fine-tuning run's selection_score) is higher-is-better.
_LOWER_IS_BETTER = re.compile(r"(^|_)(loss|mse|mae|rmse|perplexity|ppl|error|err)$")


def best_metric_mode(metric: str, mode: str = "auto", *,
                     key: str = "checkpoint.best_mode") -> str:
  """'max' or 'min': whether a higher `metric` is better. 'auto' decides by the metric's name
  (mlm_loss, loss, *_loss, mse, perplexity, *_error -> min; otherwise max)."""
  if mode not in BEST_MODES:
    raise ValueError(f"{key}={mode!r} is not one of {', '.join(BEST_MODES)}")
  if mode != "auto":
    return mode
  return "min" if _LOWER_IS_BETTER.search(metric.lower()) else "max"


def _manager(workdir: str, *, keep: int = 2, best_metric: str | None = None,
             best_mode: str = "auto", async_save: bool = True,
             read_only: bool = False) -> ocp.CheckpointManager:
  """read_only: for consumers of another run's workdir (eval, predict, init from it), which must
  change nothing there: no directory created, and no "unfinished" step directory removed (it may
  be a save that the run owning the workdir is writing right now). Not Orbax's own read_only
  option, which says so in two warnings each time: these managers never save anyway."""
  policies = [pp.LatestN(keep)]
  if best_metric:
    # Never the latest-deleting best_fn + max_to_keep: LatestN keeps the resume point, BestN the
    # best. BestN keeps the highest value; reverse=True, the lowest.
    lower_is_better = best_metric_mode(best_metric, best_mode) == "min"
    policies.append(pp.BestN(get_metric_fn=lambda m: m[best_metric], reverse=lower_is_better,
                             n=1, keep_checkpoints_without_metrics=False))
  # best_fn beside the policy: without it Orbax keeps each step's metrics in memory only, so a
  # resumed run's BestN saw no metrics on the steps before it and deleted the best one.
  options = ocp.CheckpointManagerOptions(
      preservation_policy=pp.AnyPreservationPolicy(policies), create=not read_only,
      best_fn=(lambda m: m[best_metric]) if best_metric else None,
      best_mode=best_metric_mode(best_metric, best_mode) if best_metric else "max",
      enable_async_checkpointing=async_save, cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


class Checkpointer:
  """Saves and restores training checkpoints for one workdir (every process calls every method)."""

  def __init__(self, workdir: str, *, keep: int = 2, best_metric: str | None = None,
               best_mode: str = "auto", async_save: bool = True):
    """best_metric: the eval metric whose best step is kept besides the latest `keep`; best_mode:
    'max', 'min' or 'auto' (by the metric's name, see `best_metric_mode`)."""
    self.workdir = workdir
    self.manager = _manager(workdir, keep=keep, best_metric=best_metric, best_mode=best_mode,
                            async_save=async_save)
    self._in_flight: int | None = None  # the step an asynchronous save may still be writing

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_iterator, config_dict: dict, metrics: dict | None = None,
           force: bool = False) -> bool:
    # An asynchronous save reports a failed write only when it is next waited for: wait here, so
    # that the error names the step whose write failed, not the one after it.
    self.wait()
    self._check_room(step, state)
    items = dict(
        params=ocp.args.StandardSave(state.params),
        opt=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state,
                                   "nonfinite_in_row": state.nonfinite_in_row,
                                   "nonfinite_total": state.nonfinite_total}),
        config=ocp.args.JsonSave(config_dict))
    if data_iterator is not None:
      items["data"] = distributed.DataSave(data_iterator)  # grain's files; elastic restore
    try:
      saved = self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)
    except Exception as e:  # noqa: BLE001 - OSError, or tensorstore's ValueError, ...
      raise self._write_error(step, e) from e
    if saved:
      self._in_flight = step
    return saved

  def _check_room(self, step: int, state) -> None:
    """On a local disk, a read-only or full checkpoint directory fails here, at once, with the
    reason: inside Orbax's asynchronous save such a failure surfaces minutes later as a timeout of
    its background threads. The decision is collective: with per-host disks one full host would
    otherwise leave the others waiting in the collective save."""
    error = self._room_error(step, state)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      failed = multihost_utils.process_allgather(np.array([error is not None], np.int32))
      bad = [int(p) for p in np.flatnonzero(np.asarray(failed).reshape(-1))]
      if bad and error is None:
        error = self._write_error(step, OSError(
            errno.EIO, f"process(es) {bad} cannot write their share (see their logs)"))
    if error is not None:
      raise error

  def _room_error(self, step: int, state) -> CheckpointError | None:
    directory = checkpoint_dir(self.workdir)
    if "://" in str(directory):  # a bucket: no file system to ask
      return None
    try:
      directory.mkdir(parents=True, exist_ok=True)
      probe = directory / f".write-probe-{jax.process_index()}"
      probe.write_bytes(b"\0")
      probe.unlink()
      stat = os.statvfs(directory)
    except OSError as e:
      return self._write_error(step, e)
    free = stat.f_bavail * stat.f_frsize
    # Uncompressed size of this process's share: float32 weights barely compress.
    needed = sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(state)) / jax.process_count()
    if free < needed:
      return self._write_error(step, OSError(
          errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: step {step} needs about "
          f"{needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free"))
    return None

  def _write_error(self, step: int, e: BaseException) -> CheckpointError:
    self._in_flight = None
    good = [s for s in self.manager.all_steps() if s != step]
    return CheckpointError(
        f"could not write checkpoint step {step} to {checkpoint_dir(self.workdir)}: "
        f"{_write_failure(e)}; the steps already written ({sorted(good) or 'none'}) are intact")

  def restore_latest(self, abstract_state, data_iterator):
    """Restores the newest readable step into `abstract_state` (which carries the target
    shardings) and the data iterator; falls back past damaged steps, which are then moved aside
    (`_set_aside`) so that the run can save those step numbers again. None when there is
    nothing; CheckpointError (and nothing moved) when no step is readable."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    failures, unreadable = [], []
    for step in steps:
      try:
        restored = self._restore(step, abstract_state, data_iterator)
      except Exception as e:  # noqa: BLE001 - any unreadable step: report it, try the one before
        path = checkpoint_dir(self.workdir) / str(step)
        reason = re.sub(r"\s+", " ", str(e))[:300]  # one line: Orbax's messages span several
        msg = f"checkpoint step {step} at {path} is unreadable ({type(e).__name__}: {reason})"
        log.warning("%s; trying the previous step", msg)
        failures.append(msg)
        unreadable.append(step)
        continue
      self._set_aside(unreadable)
      return step, restored
    if failures:
      raise CheckpointError("no readable checkpoint in " f"{checkpoint_dir(self.workdir)}: "
                            + "; ".join(failures))
    return None

  def _set_aside(self, steps: list[int]) -> None:
    """Moves the step directories `steps` (found unreadable, with an older step readable) to
    <step>.damaged[-<n>] beside them, then makes Orbax re-read the directory. Process 0 moves;
    every process learns whether it could before re-reading, so all agree on the steps that
    exist (or all stop with the reason)."""
    if not steps:
      return
    directory = checkpoint_dir(self.workdir)
    error = None
    if jax.process_index() == 0:
      for step in steps:
        target = _damaged_name(directory, step)
        try:
          (directory / str(step)).rename(target)
        except OSError as e:
          error = CheckpointError(
              f"checkpoint step {step} at {directory / str(step)} is unreadable and could not be "
              f"moved aside to {target} ({_write_failure(e)}): move or delete it, then resume")
          break
        log.warning("moved the unreadable checkpoint step %d aside to %s (kept for inspection; "
                    "delete it when done): this run saves step %d again", step, target, step)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      failed = multihost_utils.process_allgather(np.array([error is not None], np.int32))
      if np.asarray(failed).any() and error is None:
        error = CheckpointError(f"process 0 could not move the unreadable checkpoint step(s) "
                                f"{steps} in {directory} aside (see its log)")
    if error is not None:
      raise error
    self.manager.reload()

  def _restore(self, step, abstract_state, data_iterator):
    return _restore_state(self.manager, step, abstract_state, data_iterator)

  def wait(self):
    """Blocks until the pending save is on disk; a failed write raises CheckpointError."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._write_error(self._in_flight if self._in_flight is not None else -1, e) from e
    self._in_flight = None

  def close(self):
    self.wait()
    self.manager.close()


def _restore_state(manager, step, abstract_state, data_iterator):
  """The train state of `step` restored into `abstract_state` (its shardings), and the data
  iterator's position when one is given."""
  items = dict(
      params=ocp.args.StandardRestore(abstract_state.params),
      opt=ocp.args.StandardRestore({"step": abstract_state.step,
                                    "opt_state": abstract_state.opt_state,
                                    "nonfinite_in_row": abstract_state.nonfinite_in_row,
                                    "nonfinite_total": abstract_state.nonfinite_total}))
  if data_iterator is not None:
    items["data"] = distributed.DataRestore(data_iterator)  # any process count
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  opt = restored["opt"]
  return abstract_state.replace(
      step=opt["step"], params=restored["params"], opt_state=opt["opt_state"],
      nonfinite_in_row=opt["nonfinite_in_row"], nonfinite_total=opt["nonfinite_total"])


def restore_train_state(workdir: str, abstract_state):
  """(step, state): the whole train state (no data position) of another run's latest readable
  checkpoint, onto `abstract_state`'s shardings (init.continue_from). Read-only: an unreadable
  step is skipped with a warning, as in restore_params_and_step."""
  directory = checkpoint_dir(workdir)
  if not directory.exists():
    raise CheckpointError(f"{workdir} is not a mebert workdir: no {directory}")
  manager = _manager(workdir, async_save=False, read_only=True)
  try:
    failures = []
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        return step, _restore_state(manager, step, abstract_state, None)
      except Exception as e:  # noqa: BLE001 - try the previous step, report all
        reason = re.sub(r"\s+", " ", str(e))[:300]
        failures.append(f"step {step} at {directory / str(step)}: {type(e).__name__}: {reason}")
        log.warning("unreadable checkpoint %s", failures[-1])
    raise CheckpointError(f"no readable train state in {directory}: "
                          + ("; ".join(failures) or "no checkpoint steps"))
  finally:
    manager.close()


DAMAGED_SUFFIX = ".damaged"


def _damaged_name(directory: epath.Path, step: int) -> epath.Path:
  """<step>.damaged, or <step>.damaged-<n> for the first n free: an earlier damaged copy of the
  same step is kept too. Neither name is a step nor a temporary directory to Orbax (a '_<digits>'
  ending would be a step name to its legacy parser, hence the hyphen)."""
  target = directory / f"{step}{DAMAGED_SUFFIX}"
  n = 1
  while target.exists():
    target = directory / f"{step}{DAMAGED_SUFFIX}-{n}"
    n += 1
  return target


def save_params_checkpoint(workdir: str, params, config_dict: dict, step: int = 0) -> None:
  """Writes a params-only checkpoint (used by imports and exports of finished models)."""
  manager = _manager(workdir, keep=1_000_000, async_save=False)
  manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                             config=ocp.args.JsonSave(config_dict)), force=True)
  manager.wait_until_finished()
  manager.close()


def restore_params(workdir: str, step: int | None = None, abstract_params=None):
  """(params, config_dict) from a workdir's checkpoint, latest by default."""
  params, config_dict, _ = restore_params_and_step(workdir, step, abstract_params)
  return params, config_dict


def _local_target(step_dir: epath.Path):
  """Abstract params on this process's first device, read from the checkpoint's own metadata.

  Orbax refuses a target-less restore of a checkpoint written on another topology (a pod's
  checkpoint on a laptop, a 2-process run's in one process); a whole-array target on one local
  device restores from any topology.
  """
  metadata = ocp.StandardCheckpointHandler().metadata(step_dir / "params")
  tree = getattr(metadata, "tree", metadata)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)


def saved_config(workdir: str) -> dict | None:
  """The resolved config saved with the latest checkpoint step, or None where it cannot be read
  (an imported or older workdir: the restore itself then checks shapes)."""
  manager = _manager(workdir, async_save=False, read_only=True)
  try:
    step = manager.latest_step()
    if step is None:
      return None
    return dict(manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])
  except Exception:  # noqa: BLE001 - any unreadable config means "unknown", not an error here
    return None
  finally:
    manager.close()


def restore_params_and_step(workdir: str, step: int | None = None, abstract_params=None):
  """(params, config_dict, step) from a workdir's checkpoint, latest readable by default.

  Read-only: an unreadable step is skipped with a warning, not moved aside (an evaluator may run
  beside the training run that owns the workdir, and must not change what that run sees).
  Without `abstract_params` arrays come back whole on this process's first device (from a checkpoint
  of any topology); pass an abstract tree with shardings to restore straight onto a mesh.
  """
  directory = checkpoint_dir(workdir)
  if not directory.exists():
    raise CheckpointError(f"{workdir} is not a mebert workdir: no {directory}")
  manager = _manager(workdir, async_save=False, read_only=True)
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    raise CheckpointError(f"no checkpoint steps in {directory}")
  if step is not None and step not in steps:
    raise CheckpointError(f"no checkpoint step {step} in {directory}; available: {sorted(steps)}")
  candidates = [step] if step is not None else steps
  failures = []
  for s in candidates:
    try:
      target = abstract_params if abstract_params is not None else _local_target(directory / str(s))
      params_args = ocp.args.StandardRestore(target)
      restored = manager.restore(s, args=ocp.args.Composite(params=params_args,
                                                            config=ocp.args.JsonRestore()))
      manager.close()
      return restored["params"], dict(restored["config"]), s
    except Exception as e:  # noqa: BLE001 - try the previous step, report all
      failures.append(f"step {s} at {directory / str(s)}: {type(e).__name__}: {str(e)[:300]}")
      log.warning("unreadable checkpoint %s", failures[-1])
  manager.close()
  raise CheckpointError("no readable checkpoint: " + "; ".join(failures))

