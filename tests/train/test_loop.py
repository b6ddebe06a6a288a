"""The shared training loop (mebert.train.loop) against a toy task: a linear model, a checkpointable
stream of batches and a scripted dev score. Each feature once here; tests/train/test_loop_kinds.py
runs the same features through pretraining, fine-tuning and distillation."""

import functools
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mebert.parallel.prefetch import DevicePrefetcher
from mebert.train import checkpoints, host_sync, loop, selection as selection_lib, steps

DIM = 4
# The dev score at each evaluation step (every 3): best at 6, then two worse evaluations.
SCORES = {3: 0.5, 6: 0.9, 9: 0.8, 12: 0.7, 15: 0.95, 18: 0.99}


class Stream:
  """Batch k of (x, y) is a function of k alone; its state is k (grain-like get/set_state)."""

  def __init__(self, nan_from: int | None = None):
    self.index, self.nan_from = 0, nan_from

  def __next__(self):
    rng = np.random.default_rng(self.index)
    x = rng.normal(size=(8, DIM)).astype(np.float32)
    y = x @ np.arange(1.0, DIM + 1, dtype=np.float32)
    self.index += 1
    if self.nan_from is not None and self.index >= self.nan_from:
      y = np.full_like(y, np.nan)
    return {"x": x, "y": y}

  def get_state(self):
    return {"index": self.index}

  def set_state(self, state):
    self.index = int(state["index"])


def _step(state, batch, tx):
  def loss_fn(params):
    return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
  new = steps.guarded_update(state, grads, tx, finite)
  n = jnp.asarray(batch["x"].shape[0], jnp.float32)
  return new, {"loss": loss, "tokens": n, "real_tokens": n, "steps": jnp.ones(()),
               "nonfinite_in_row": new.nonfinite_in_row}


class Toy(loop.Task):
  name = "toy"

  def __init__(self, on_step=None):
    self.tx = optax.sgd(0.05)
    self._step = jax.jit(functools.partial(_step, tx=self.tx), donate_argnums=0)
    self.on_step = on_step

  def init(self):
    zero = lambda: jnp.zeros((), jnp.int32)
    params = {"w": jnp.zeros(DIM)}
    return steps.TrainState(zero(), params, self.tx.init(params), zero(), zero())

  def step(self, state, batch):
    return self._step(state, batch)

  def evaluate(self, state):
    return {"score": SCORES.get(int(state.step), 0.0), "w0": float(state.params["w"][0])}

  def train_scalars(self, sums, step):
    return {"loss": float(sums["loss"]) / float(sums["steps"])}

  def observe_batch(self, step, host_batch):
    if self.on_step is not None:
      self.on_step(step)


def _run(workdir, task=None, nan_from=None, **cadence):
  """One invocation: resumes from the workdir's latest checkpoint like the real runs."""
  task = task or Toy()
  settings = dict(num_steps=20, log_every=2, eval_every=3, save_every=3,
                  max_nonfinite_in_row=3)
  settings.update(cadence)
  ckpt = checkpoints.Checkpointer(str(workdir), keep=1, best_metric="score", best_mode="max",
                                  async_save=False)
  state = task.init()
  stream = Stream(nan_from)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                          state)
  batches = DevicePrefetcher(stream, jax.device_put, 2)
  restored = ckpt.restore_latest(abstract, batches)
  start = 0
  if restored is not None:
    start, state = restored
  selection = selection_lib.Selection("score", "max", patience=2).restore(str(workdir), start)
  return loop.run(task, state, start_step=start, batches=batches, checkpointer=ckpt,
                  cadence=loop.Cadence(**settings), selection=selection, workdir=str(workdir),
                  config_dict={"toy": True}, save_batches=True)


def _records(workdir, split):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if r["split"] == split]


def test_logs_evaluates_keeps_latest_and_best_and_stops_early(tmp_path, capsys):
  out = _run(tmp_path, profile=(1, 3), guard_host_sync=True)
  assert out.step == 12 and out.selection.stopped and out.selection.best_step == 6
  steps_on_disk = checkpoints.Checkpointer(str(tmp_path)).all_steps()
  assert sorted(steps_on_disk) == [6, 12]  # the best and the latest (keep=1)
  train = _records(tmp_path, "train")
  # Every 2 steps, and before each evaluation and checkpoint (3, 9): a window is training alone.
  assert [r["step"] for r in train] == [2, 3, 4, 6, 8, 9, 10, 12]
  assert all(r["tokens_per_s"] > 0 and np.isfinite(r["loss"]) for r in train)
  assert train[-1]["loss"] < train[0]["loss"]
  assert [r["step"] for r in _records(tmp_path, "eval")] == [3, 6, 9, 12]
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert json.loads((tmp_path / "best.json").read_text())["step"] == 6
  record = json.loads((tmp_path / "early_stopping.json").read_text())
  assert record["stopped"] and sorted(record["history"], key=int) == ["3", "6", "9", "12"]
  assert list((tmp_path / "profile").rglob("*.xplane.pb"))  # the trace of steps 2-3
  bar = capsys.readouterr().err
  assert "toy:" in bar and "tok/s" in bar and "<" in bar  # elapsed<remaining: the ETA


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_step_and_the_rerun_ends_bitwise_as_uninterrupted(tmp_path, sig):
  full = _run(tmp_path / "full")

  def kill(step):
    if step == 7:
      os.kill(os.getpid(), sig)

  before = signal.getsignal(sig)
  with pytest.raises(SystemExit) as e:
    _run(tmp_path / "cut", Toy(on_step=kill))
  assert e.value.code == 0 and signal.getsignal(sig) == before  # the loop's handler is gone
  assert max(checkpoints.Checkpointer(str(tmp_path / "cut")).all_steps()) == 7
  resumed = _run(tmp_path / "cut")
  # The early-stopping state of step 7 (best 6, one evaluation without improvement) survived:
  # the rerun stops at 12 as the uninterrupted run did, not at 15 or 18.
  assert resumed.step == full.step == 12 and resumed.selection.best_step == 6
  # The rerun's checkpointer knew step 6 was the best (its metrics are on disk): kept.
  assert sorted(checkpoints.Checkpointer(str(tmp_path / "cut")).all_steps()) == [6, 12]
  np.testing.assert_array_equal(np.asarray(resumed.state.params["w"]),
                                np.asarray(full.state.params["w"]))
  last_eval = lambda w: {k: v for k, v in _records(w, "eval")[-1].items() if k != "time"}
  assert last_eval(tmp_path / "cut") == last_eval(tmp_path / "full")


def test_nonfinite_steps_are_skipped_and_the_run_stops_at_the_limit_not_the_log_step(tmp_path):
  with pytest.raises(loop.TrainingStopped, match=r"3 non-finite \(NaN/Inf\) steps in a row at step "
                                                 r"7") as e:
    _run(tmp_path, nan_from=5, log_every=100, eval_every=100, save_every=3)
  assert "max_nonfinite_in_row=3" in str(e.value)
  params, _, step = checkpoints.restore_params_and_step(str(tmp_path))
  assert step == 6 and np.isfinite(np.asarray(params["w"])).all()  # skipped updates: still good
  # Seen one step late (read after step 8 was dispatched, not at 7 itself): stopped after 8.
  assert [r["step"] for r in _records(tmp_path, "train")][-1] == 8  # the window, logged


def test_a_host_read_in_the_step_fails_under_the_guard(tmp_path):
  class Leaky(Toy):
    def step(self, state, batch):
      state, metrics = super().step(state, batch)
      float(metrics["loss"])  # a stray sync: every step would wait for the devices
      return state, metrics

  with pytest.raises(host_sync.HostSyncError, match="guard_host_sync"):
    _run(tmp_path / "guarded", Leaky(), guard_host_sync=True)
  assert _run(tmp_path / "unguarded", Leaky(), num_steps=4).step == 4


class _Counter:
  """A step's non-finite counter that records whether it was read."""

  def __init__(self, value):
    self.value, self.read = value, False

  def copy_to_host_async(self):
    pass

  def __int__(self):
    self.read = True
    return self.value


def test_nonfinite_watch_reads_each_counter_one_step_late_or_when_flushed():
  watch = loop.NonfiniteWatch(limit=2)
  first, second, third = _Counter(1), _Counter(2), _Counter(0)
  assert watch.push(1, first) is None and not first.read  # not waited for at its own step
  assert watch.push(2, second) is None and first.read and not second.read  # one step late
  assert watch.push(3, third) == (2, 2)  # step 2's counter reached the limit
  assert watch.flush() is None and third.read  # a log step reads its own step's at once
  assert watch.flush() is None


def test_selection_restores_the_state_of_the_checkpoint_step(tmp_path):
  rule = selection_lib.Selection("loss", "auto", patience=3)
  assert rule.mode == "min"
  for step, loss in ((3, 2.0), (6, 1.0), (9, 1.5)):
    rule.update(step, {"loss": loss})
  rule.save(str(tmp_path))
  fresh = lambda: selection_lib.Selection("loss", "min", patience=3)
  at_7 = fresh().restore(str(tmp_path), 7)  # checkpoint 7: the evaluation at 9 is redone
  assert (at_7.best_step, at_7.bad_evals, sorted(at_7.history)) == (6, 0, ["3", "6"])
  assert at_7.best_metrics == {"loss": 1.0}  # kept once, with the evaluation that was the best
  assert fresh().restore(str(tmp_path), 9).bad_evals == 1
  assert fresh().restore(str(tmp_path), 2).best is None
  with pytest.raises(ValueError, match="early_stopping.mode='up'"):
    selection_lib.Selection("loss", "up")


@pytest.mark.parametrize("text, want", [("", None), ("5", (5, 6)), ("2, 4", (2, 4))])
def test_profile_steps(text, want):
  assert loop.parse_profile_steps(text) == want


@pytest.mark.parametrize("text", ["4,2", "a,b", "1,2,3", "-1,3"])
def test_bad_profile_steps_name_the_key(text):
  with pytest.raises(ValueError, match=f"train.profile_steps='{text}'"):
    loop.parse_profile_steps(text)
