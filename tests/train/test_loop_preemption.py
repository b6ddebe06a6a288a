"""Fine-tuning and distillation survive kills as pretraining does (tests/train/test_trainer.py):
`python -m mebert.train` killed with SIGKILL at three random steps and run again each time ends
with parameters bitwise equal to an uninterrupted run's, every step having seen the same batch
(the same loss); SIGTERM saves the current step and exits 0, and the rerun continues from it. The
runs stop early (patience 2 after the best at 4: at 12 of 16), so the early-stopping state must
survive each resume for the ends to agree."""

import json
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from task_runs import finetune_config, write_config_file, write_task_data
from tiny_run import REPO, read_losses, subprocess_env

from mebert.train import checkpoints

pytestmark = pytest.mark.slow

KEYS = {"train.num_steps": 16, "train.log_every": 1, "eval.every_steps": 4,
        "checkpoint.every_steps": 2, "early_stopping.patience": 2,
        "early_stopping.min_delta": 1e9}
KINDS = ("finetune", "distill")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """The data, a teacher for distillation (fine-tuned in this process) and a config file per
  kind."""
  from mebert.tasks import finetune

  root = tmp_path_factory.mktemp("preemption")
  data = write_task_data(root)
  teacher = root / "teacher"
  finetune.train_and_evaluate(finetune_config(data, **{"train.num_steps": 8}), str(teacher))
  return {kind: write_config_file(root / f"{kind}_config.py", data,
                                  str(teacher) if kind == "distill" else None, **KEYS)
          for kind in KINDS}


def _start(config_file, workdir):
  return subprocess.Popen(
      [sys.executable, "-m", "mebert.train", f"--config={config_file}", f"--workdir={workdir}"],
      cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(proc, workdir, step, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if (workdir / "metrics.jsonl").exists() and max(read_losses(workdir) or {0: 0}) >= step:
      return
    time.sleep(0.05)


def _finish(config_file, workdir) -> dict:
  proc = _start(config_file, workdir)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
  made = {}

  def get(kind):
    if kind not in made:
      workdir = tmp_path_factory.mktemp(f"{kind}_full")
      made[kind] = workdir, _finish(setup[kind], workdir)
    return made[kind]

  return get


def _assert_same_run(workdir, reference, result, want):
  assert result["last_step"] == want["last_step"] == 12 and result["stopped_early"]
  assert {k: v for k, v in result.items() if not k.endswith(("_s", "_per_s"))} == {
      k: v for k, v in want.items() if not k.endswith(("_s", "_per_s"))}
  full, resumed = read_losses(reference), read_losses(workdir)
  assert sorted(full) == sorted(resumed) == list(range(1, 13))
  np.testing.assert_array_equal([resumed[s] for s in range(1, 13)],
                                [full[s] for s in range(1, 13)])  # the same batch at each step
  a, _ = checkpoints.restore_params(str(reference), 12)
  b, _ = checkpoints.restore_params(str(workdir), 12)
  jax.tree.map(np.testing.assert_array_equal, a, b)  # bitwise
  record = lambda w: {k: v for k, v in json.loads((w / "early_stopping.json").read_text()).items()
                      if k not in ("best_metrics", "history")}
  assert record(workdir) == record(reference)


@pytest.mark.parametrize("kind", KINDS)
def test_killed_at_three_random_steps_ends_bitwise_equal_to_uninterrupted(setup, uninterrupted,
                                                                          tmp_path, kind):
  reference, want = uninterrupted(kind)
  for threshold in sorted(random.Random(7).sample(range(2, 12), 3)):
    proc = _start(setup[kind], tmp_path)
    _wait_for_step(proc, tmp_path, threshold)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert max(read_losses(tmp_path)) < 12, f"the run finished before the kill at {threshold}"
  _assert_same_run(tmp_path, reference, _finish(setup[kind], tmp_path), want)


@pytest.mark.parametrize("kind", KINDS)
def test_sigterm_saves_the_current_step_and_the_rerun_continues_from_it(setup, uninterrupted,
                                                                        tmp_path, kind):
  reference, want = uninterrupted(kind)
  proc = _start(setup[kind], tmp_path)
  _wait_for_step(proc, tmp_path, 5)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  saved = max(checkpoints.Checkpointer(str(tmp_path)).all_steps())
  assert 5 <= saved < 12 and f"SIGTERM received: saved step {saved}, exiting" in err
  assert max(read_losses(tmp_path)) == saved  # it stopped at the step it saved
  rerun = _start(setup[kind], tmp_path)
  out, err = rerun.communicate(timeout=600)
  assert rerun.returncode == 0, err[-3000:]
  assert f"at step {saved}" in err  # "resumed ... at step N"
  _assert_same_run(tmp_path, reference, json.loads(out.strip().splitlines()[-1]), want)
