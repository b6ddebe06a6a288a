"""The loop's features through each kind of training that runs on it: pretraining, fine-tuning and
distillation (tests/train/test_loop.py has each against the loop itself).

One run of each kind exercises everything at once: logging every 2 steps (progress bar, TensorBoard,
metrics.jsonl), evaluation every 3, checkpoints keeping the latest and the best, the profiler on
steps 2-3, the host-sync guard on, a SIGTERM at step 7 (save, exit 0) and the same run again, whose
early-stopping state (best at 3, one evaluation without improvement) survives the resume, so that
the evaluation at 9 stops it. A second run of each stops on non-finite steps.
"""

import contextlib
import io
import json
import os
import signal

import jax
import numpy as np
import pytest
from task_runs import finetune_config, write_task_data
from tiny_run import tiny_config

from mebert.parallel import mesh as mesh_lib
from mebert.train import checkpoints, loop

KINDS = ("pretrain", "finetune", "distill")
LOOP_KEYS = {"train.log_every": 2, "eval.every_steps": 3, "checkpoint.keep": 1,
             "early_stopping.patience": 2, "early_stopping.min_delta": 1e9,  # no 2nd best
             "train.profile_steps": "1,3", "train.guard_host_sync": True, "train.num_steps": 14}


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
  return write_task_data(tmp_path_factory.mktemp("loop_kinds_data"))


def _train(kind, config, workdir):
  from mebert.compress import distill
  from mebert.tasks import finetune
  from mebert.train import trainer

  if kind == "pretrain":
    return trainer.train_and_evaluate(config, str(workdir))
  return (distill.run if kind == "distill" else finetune.run)(config, str(workdir), "train")


def _config(kind, task_data, teacher, **keys):
  if kind == "pretrain":
    return tiny_config(**{"checkpoint.every_steps": 3, **keys})
  return finetune_config(task_data, teacher, **keys)


def _sigterm_at(monkeypatch, at_step):
  """SIGTERM to this process when the batch of `at_step` is handed to the step (as a notice could
  arrive at any time while that step runs)."""
  from mebert.tasks import finetune
  from mebert.train import trainer

  for task_class in (trainer._Pretraining, finetune.FineTuning):  # distillation's is the latter
    original = task_class.observe_batch

    def observe_and_signal(self, step, host_batch, original=original):
      if step == at_step:
        os.kill(os.getpid(), signal.SIGTERM)
      return original(self, step, host_batch)

    monkeypatch.setattr(task_class, "observe_batch", observe_and_signal)


@pytest.fixture(scope="module")
def runs(task_data, tmp_path_factory):
  """kind -> (workdir, result of the resumed run, progress-bar text), made on first use."""
  made = {}

  def get(kind):
    if kind in made:
      return made[kind]
    teacher = get("finetune")[0] if kind == "distill" else None
    workdir = tmp_path_factory.mktemp(kind)
    config = _config(kind, task_data, teacher, **LOOP_KEYS)
    bar = io.StringIO()
    with contextlib.redirect_stderr(bar), pytest.MonkeyPatch.context() as mp:
      _sigterm_at(mp, 7)
      with pytest.raises(SystemExit) as e:
        _train(kind, config, workdir)
      assert e.value.code == 0
      assert max(checkpoints.Checkpointer(str(workdir)).all_steps()) == 7
    with contextlib.redirect_stderr(bar):
      result = _train(kind, config, workdir)
    made[kind] = workdir, result, bar.getvalue()
    return made[kind]

  return get


def _records(workdir, split):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if r["split"] == split]


@pytest.mark.parametrize("kind", KINDS)
def test_every_loop_feature_through_each_kind(runs, kind):
  workdir, result, bar = runs(kind)
  # Early stopping survived the SIGTERM at 7: best at 3, the 2nd evaluation without improvement
  # at 9 ends the run (patience 2), which a forgotten state would have let run to 12 or 14.
  last = result["step"] if kind == "pretrain" else result["last_step"]
  assert last == 9
  if kind != "pretrain":
    assert result["stopped_early"] and result["step"] == 3
  record = json.loads((workdir / "early_stopping.json").read_text())
  assert record["stopped"] and record["best_step"] == 3
  assert sorted(record["history"], key=int) == ["3", "6", "9"]
  assert json.loads((workdir / "best.json").read_text())["step"] == 3
  assert sorted(checkpoints.Checkpointer(str(workdir)).all_steps()) == [3, 9]  # best + latest
  train = _records(workdir, "train")
  # Every 2 steps and before each evaluation and checkpoint (3, 6, 7 the preemption save, 9).
  assert {r["step"] for r in train} == {2, 3, 4, 6, 7, 8, 9}
  assert all(r["tokens_per_s"] > 0 and np.isfinite(r["loss"]) for r in train)
  assert [r["step"] for r in _records(workdir, "eval")] == [3, 6, 9]
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert list((workdir / "profile").rglob("*.xplane.pb"))
  assert f"{kind}:" in bar and "tok/s" in bar  # the progress bar (its ETA: elapsed<left)


def _poison_from(monkeypatch, first_bad: int):
  """Every floating array of the batches put on the devices, from the first_bad-th on, is NaN."""
  real, calls = mesh_lib.global_batch, []

  def poisoned(batch, mesh):
    calls.append(1)
    if len(calls) >= first_bad:
      batch = {k: np.full_like(v, np.nan) if np.issubdtype(v.dtype, np.floating) else v
               for k, v in batch.items()}
    return real(batch, mesh)

  monkeypatch.setattr(mesh_lib, "global_batch", poisoned)


@pytest.mark.parametrize("kind", KINDS)
def test_nonfinite_stop_at_the_limit_not_the_log_step(runs, task_data, tmp_path, monkeypatch,
                                                      kind):
  """log_every=100, stop after 3 non-finite steps in a row, NaN from step 5: the run stops when
  step 7's counter is read, right after step 8 is dispatched, not at 100, and the checkpoints it
  wrote are good."""
  teacher = runs("finetune")[0] if kind == "distill" else None
  # The feature run's model and schedule (num_steps 14): its compiled step serves again, and its
  # tokenizer (pretraining trains one in each new workdir otherwise).
  config = _config(kind, task_data, teacher, **{
      "train.num_steps": 14, "train.log_every": 100, "eval.every_steps": 100,
      "checkpoint.every_steps": 3, "train.max_nonfinite_in_row": 3})
  if kind == "pretrain":
    config.data.vocab = str(runs("pretrain")[0] / "vocab" / "spm.model")
  _poison_from(monkeypatch, 5)
  with pytest.raises(loop.TrainingStopped, match=r"3 non-finite \(NaN/Inf\) steps in a row at "
                                                 r"step 7 \(train.max_nonfinite_in_row=3\)"):
    _train(kind, config, tmp_path)
  params, _, step = checkpoints.restore_params_and_step(str(tmp_path))
  assert step == 6 and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


@pytest.mark.parametrize("kind", KINDS)
def test_eval_and_predict_read_every_workdir_the_loop_wrote(runs, task_data, tmp_path, kind):
  """--mode=eval (and predict, for task workdirs) on a workdir that was stopped by SIGTERM and
  resumed: everything they need (checkpoints with the resolved config, best.json, the vocabulary)
  is there."""
  workdir, result, _ = runs(kind)
  teacher = runs("finetune")[0] if kind == "distill" else None
  config = _config(kind, task_data, teacher, **LOOP_KEYS)
  if kind == "pretrain":
    from mebert.train import trainer

    metrics = trainer.evaluate_checkpoint(config, str(workdir))
    assert metrics["step"] == 9 and metrics["mlm_accuracy"] == pytest.approx(result["mlm_accuracy"])
    return
  from mebert.tasks import finetune

  metrics = finetune.run(config, str(workdir), "eval")
  assert metrics["step"] == 3 and metrics["accuracy"] == pytest.approx(result["accuracy"])
  src = tmp_path / "in.txt"
  src.write_text("a good film\nboring plot\n")
  out = finetune.run(config, str(workdir), "predict", input_path=str(src),
                     output_path=str(tmp_path / "out.jsonl"))
  rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert out["predictions"] == len(rows) == 2 and {r["label"] for r in rows} <= {"0", "1"}
