"""Past a damaged checkpoint (issue 20, item 2) and the keep-best direction (item 3).

A resumed run that falls back from an unreadable latest step moves that step aside to
checkpoints/<step>.damaged (never deleted), so that it saves the same step number again and ends
with a readable checkpoint there; eval reads it. BestN keeps the highest or the lowest value."""

import logging
import shutil

import numpy as np
import orbax.checkpoint as ocp
import pytest
from tiny_run import tiny_config

from mebert.train import checkpoints, trainer


def _delete_arrays(step_dir):
  files = [p for p in (step_dir / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert files
  for f in files:
    f.unlink()


def _step_dirs(workdir) -> list[str]:
  return sorted(p.name for p in (workdir / "checkpoints").iterdir() if not p.name.startswith("."))


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory):
  """A finished 6-step run: checkpoints 3 and 6."""
  workdir = tmp_path_factory.mktemp("six")
  trainer.train_and_evaluate(CONFIG, str(workdir))
  return workdir


CONFIG = tiny_config(**{"train.num_steps": 6})


def test_resumed_run_resaves_a_damaged_latest_step_and_eval_reads_it(six_steps, tmp_path, caplog):
  workdir = tmp_path / "w"
  shutil.copytree(six_steps, workdir)
  _delete_arrays(workdir / "checkpoints" / "6")
  with caplog.at_level(logging.WARNING):
    final = trainer.train_and_evaluate(CONFIG, str(workdir))  # from step 3, saves 6 again
  assert final["step"] == 6
  assert _step_dirs(workdir) == ["3", "6", "6.damaged"]
  moved = [r.getMessage() for r in caplog.records if "moved the unreadable" in r.getMessage()]
  assert len(moved) == 1 and str(workdir / "checkpoints" / "6.damaged") in moved[0]
  _, _, step = checkpoints.restore_params_and_step(str(workdir))
  assert step == 6  # the new step 6, readable
  assert trainer.evaluate_checkpoint(CONFIG, str(workdir))["step"] == 6
  # Orbax (its cleanup of unfinished saves included) neither lists nor removes the damaged copy.
  checkpointer = checkpoints.Checkpointer(str(workdir))
  assert checkpointer.all_steps() == [3, 6]
  checkpointer.close()
  assert _step_dirs(workdir) == ["3", "6", "6.damaged"]


def test_a_second_damaged_copy_of_a_step_gets_its_own_name(tmp_path):
  directory = checkpoints.checkpoint_dir(str(tmp_path))
  for name in ("6", "6.damaged", "6.damaged-1"):
    (directory / name).mkdir(parents=True)
  assert checkpoints._damaged_name(directory, 6).name == "6.damaged-2"
  assert checkpoints._damaged_name(directory, 3).name == "3.damaged"


def test_eval_skips_a_damaged_step_without_moving_it(six_steps, tmp_path):
  """Read-only consumers fall back too, but leave the workdir to the run that owns it."""
  workdir = tmp_path / "w"
  shutil.copytree(six_steps, workdir)
  _delete_arrays(workdir / "checkpoints" / "6")
  assert trainer.evaluate_checkpoint(CONFIG, str(workdir))["step"] == 3
  assert _step_dirs(workdir) == ["3", "6"]


def _kept_steps(tmp_path, values, **kwargs) -> list[int]:
  """Saves steps 1..N with `metric`=values[i] through the Checkpointer (keep the latest 1 plus the
  best); returns the steps left on disk."""
  state = trainer.steps.TrainState(step=np.int32(0), params={"w": np.zeros(2, np.float32)},
                                   opt_state=(), nonfinite_in_row=np.int32(0),
                                   nonfinite_total=np.int32(0))
  checkpointer = checkpoints.Checkpointer(str(tmp_path), keep=1, async_save=False, **kwargs)
  for step, value in enumerate(values, start=1):
    checkpointer.save(step, state, None, {}, metrics={kwargs["best_metric"]: value})
  steps = checkpointer.all_steps()
  checkpointer.close()
  return sorted(steps)


LOSSES = [3.0, 1.0, 2.0, 2.5]  # the lowest at step 2, the highest at step 1


@pytest.mark.parametrize("metric, mode, best", [
    ("mlm_loss", "auto", 2), ("loss", "auto", 2), ("distill_loss", "auto", 2), ("mse", "auto", 2),
    ("perplexity", "auto", 2), ("mlm_accuracy", "auto", 1), ("f1", "auto", 1),
    ("mlm_loss", "max", 1), ("mlm_accuracy", "min", 2)])
def test_best_checkpoint_is_the_lowest_loss_or_the_highest_score(tmp_path, metric, mode, best):
  assert _kept_steps(tmp_path, LOSSES, best_metric=metric, best_mode=mode) == sorted({best, 4})


def test_bad_best_mode_names_the_key(tmp_path):
  with pytest.raises(ValueError, match=r"checkpoint\.best_mode='lowest' is not one of auto, max, "
                                       r"min$"):
    checkpoints.Checkpointer(str(tmp_path), best_metric="mlm_loss", best_mode="lowest")
  assert not (tmp_path / "checkpoints").exists()  # failed before Orbax touched the workdir


def test_damaged_names_are_neither_steps_nor_unfinished_saves_to_orbax(tmp_path):
  """What the move relies on, asked of Orbax directly: a fresh manager (which deletes unfinished
  step directories) keeps <step>.damaged[-n] and does not list them."""
  directory = checkpoints.checkpoint_dir(str(tmp_path))
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      cleanup_tmp_directories=True, enable_async_checkpointing=False))
  manager.save(5, args=ocp.args.Composite(params=ocp.args.StandardSave({"w": np.ones(2)})))
  manager.close()
  for name in ("5.damaged", "5.damaged-1", "5.damaged-12"):
    shutil.copytree(str(directory / "5"), str(directory / name))
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      cleanup_tmp_directories=True, enable_async_checkpointing=False))
  assert manager.all_steps() == [5]
  manager.close()
  assert sorted(p.name for p in directory.iterdir()) == ["5", "5.damaged", "5.damaged-1",
                                                        "5.damaged-12"]


def test_a_damaged_step_that_cannot_be_moved_stops_with_the_reason(six_steps, tmp_path,
                                                                   monkeypatch):
  workdir = tmp_path / "w"
  shutil.copytree(six_steps, workdir)
  _delete_arrays(workdir / "checkpoints" / "6")
  path_type = type(checkpoints.checkpoint_dir(str(workdir)))

  def refuse(self, target):
    raise PermissionError(13, "Permission denied", str(self))

  monkeypatch.setattr(path_type, "rename", refuse)
  with pytest.raises(checkpoints.CheckpointError) as error:
    trainer.train_and_evaluate(CONFIG, str(workdir))
  message = str(error.value)
  assert "step 6" in message and "6.damaged" in message and "Permission denied" in message
  assert "\n" not in message
  assert _step_dirs(workdir) == ["3", "6"]  # nothing lost, nothing half-moved
