"""The pretraining loop between log steps: each of the train and eval steps traced and compiled once
per run (log, eval and checkpoint steps and a resume in between), no device-to-host read while a
step is dispatched, and device prefetch that resumes bitwise like a run without it."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_run import read_losses, tiny_config

from mebert.train import checkpoints, host_sync, loop, steps, trainer

# Two dozen steps, logging every 4, evaluating every 10, saving every 8: every kind of step happens
# more than once. The interrupted run stops at 19; its last periodic checkpoint is 16, where the
# logging windows of both runs line up again (a logged loss is its window's mean; windows also
# close before each evaluation and checkpoint). A constant
# learning rate after warmup: a decay would depend on num_steps, which the stopped run shortens.
CADENCE = {"train.num_steps": 24, "train.log_every": 4, "eval.every_steps": 10,
           "checkpoint.every_steps": 8, "train.schedule": "constant"}
STOP_AT = 19


class _Counted:
  """Wraps steps.train_step/eval_step: counts the traces (the wrapped Python function runs once
  per trace) and keeps the jitted functions the trainer builds, to read their compile caches."""

  def __init__(self, monkeypatch):
    self.traces = {"train_step": 0, "eval_step": 0}
    self.jitted = []
    for name in self.traces:
      original = getattr(steps, name)
      monkeypatch.setattr(steps, name, self._counting(name, original))
    jitted_train_step = trainer.Experiment.jitted_train_step

    def keep(exp):
      fn = jitted_train_step(exp)
      self.jitted.append(fn)
      return fn

    monkeypatch.setattr(trainer.Experiment, "jitted_train_step", keep)

  def _counting(self, name, original):
    def counted(*args, **kwargs):
      self.traces[name] += 1
      return original(*args, **kwargs)

    return counted

  def run(self, config, workdir):
    before = dict(self.traces)
    trainer.train_and_evaluate(config, str(workdir))
    compiles = self.jitted[-1]._cache_size()  # executables the jitted train step holds
    return {k: v - before[k] for k, v in self.traces.items()}, compiles


def test_one_compile_per_run_no_host_reads_and_prefetch_resumes_bitwise(tmp_path, monkeypatch):
  counted = _Counted(monkeypatch)
  plain = tiny_config(**CADENCE, **{"data.device_prefetch": 0})
  fast = tiny_config(**CADENCE, **{"data.device_prefetch": 2, "train.guard_host_sync": True})

  reference = tmp_path / "reference"
  assert counted.run(plain, reference) == ({"train_step": 1, "eval_step": 1}, 1)

  resumed = tmp_path / "resumed"
  fast.train.num_steps = STOP_AT
  assert counted.run(fast, resumed) == ({"train_step": 1, "eval_step": 1}, 1)
  shutil.rmtree(resumed / "checkpoints" / str(STOP_AT))  # the end-of-run save a kill would skip
  assert max(int(p.name) for p in (resumed / "checkpoints").iterdir() if p.name.isdigit()) == 16
  fast.train.num_steps = CADENCE["train.num_steps"]
  # From step 16, where the prefetcher had read batches 17 and 18 already: the checkpoint must hold
  # the data position after 16, or steps 17..24 would train on later batches.
  assert counted.run(fast, resumed) == ({"train_step": 1, "eval_step": 1}, 1)

  want, got = read_losses(reference), read_losses(resumed)
  # Every 4 steps, and before each evaluation (a log window never spans one).
  assert sorted(want) == [4, 8, 10, 12, 16, 20, 24] and set(want) <= set(got)
  np.testing.assert_array_equal([got[s] for s in sorted(want)], [want[s] for s in sorted(want)])
  a, _ = checkpoints.restore_params(str(reference), 24)
  b, _ = checkpoints.restore_params(str(resumed), 24)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_host_read_between_log_steps_fails_under_the_guard(tmp_path, monkeypatch):
  """A stray float(loss) in the loop (here injected into the metric accumulation of step 2 of 4,
  not a log step): with train.guard_host_sync it raises, naming the option."""
  accumulate = loop._add_sums

  def leaky(sums, metrics):
    float(metrics["loss"])
    return accumulate(sums, metrics)

  monkeypatch.setattr(loop, "_add_sums", leaky)
  config = tiny_config(**{"train.num_steps": 4, "train.log_every": 4, "train.guard_host_sync": True})
  with pytest.raises(host_sync.HostSyncError, match="guard_host_sync"):
    trainer.train_and_evaluate(config, str(tmp_path / "guarded"))


def test_no_host_reads_covers_this_thread_and_only_inside():
  import threading

  mesh_array = jax.device_put(jnp.arange(8.0), jax.sharding.NamedSharding(
      jax.make_mesh((8,), ("d",)), jax.sharding.PartitionSpec("d")))
  scalar = jnp.float32(3.0) + 1
  with host_sync.no_host_reads():
    for read in (lambda: float(scalar), lambda: jax.device_get(scalar), lambda: int(scalar),
                 lambda: f"{scalar:.2f}", lambda: np.asarray(mesh_array), lambda: mesh_array.tolist()):
      with pytest.raises(host_sync.HostSyncError):
        read()
    other = []
    thread = threading.Thread(target=lambda: other.append(float(scalar)))  # e.g. Orbax's writer
    thread.start()
    thread.join()
    assert other == [4.0]
    with host_sync.no_host_reads(enabled=False):  # nested off does not switch it off
      with pytest.raises(host_sync.HostSyncError):
        float(scalar)
  assert float(scalar) == 4.0 and np.asarray(mesh_array).sum() == 28.0
