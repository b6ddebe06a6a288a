"""Surviving bad days: damaged checkpoints, half-written steps, NaN losses, SIGTERM."""

import logging
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from tiny_run import REPO, read_losses, subprocess_env, tiny_config

from mebert.train import checkpoints, loop, trainer


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("six")
  trainer.train_and_evaluate(tiny_config(**{"train.num_steps": 6}), str(workdir))
  return workdir


def _copy(src, dst):
  shutil.copytree(src, dst, dirs_exist_ok=True)
  return dst


def _array_files(step_dir):
  return [p for p in (step_dir / "params").rglob("*") if p.is_file() and p.parent.name == "d"]


def test_truncated_latest_step_falls_back_to_previous(six_steps, tmp_path, caplog):
  workdir = _copy(six_steps, tmp_path / "w")
  for f in _array_files(workdir / "checkpoints" / "6"):
    f.write_bytes(f.read_bytes()[:10])  # truncated array data
  with caplog.at_level(logging.WARNING):
    params, _, step = checkpoints.restore_params_and_step(str(workdir))
  assert step == 3
  assert any("step 6" in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)


def test_missing_metadata_falls_back_and_training_resumes(six_steps, tmp_path):
  workdir = _copy(six_steps, tmp_path / "w")
  (workdir / "checkpoints" / "6" / "params" / "_METADATA").unlink()
  final = trainer.train_and_evaluate(tiny_config(**{"train.num_steps": 6}), str(workdir))
  assert final["step"] == 6
  losses = read_losses(workdir)
  full = read_losses(six_steps)
  assert losses[6] == full[6]  # redone from step 3 with the same data: same loss


def test_half_written_step_is_ignored(six_steps, tmp_path):
  workdir = _copy(six_steps, tmp_path / "w")
  half = workdir / "checkpoints" / "9.orbax-checkpoint-tmp-1234"
  (half / "params").mkdir(parents=True)
  (half / "params" / "junk").write_bytes(b"\0" * 10)
  _, _, step = checkpoints.restore_params_and_step(str(workdir))
  assert step == 6


def test_no_readable_checkpoint_stops_instead_of_restarting(six_steps, tmp_path):
  workdir = _copy(six_steps, tmp_path / "w")
  for step_dir in (workdir / "checkpoints").iterdir():
    if step_dir.name.isdigit():
      for f in _array_files(step_dir):
        f.unlink()
  with pytest.raises(checkpoints.CheckpointError, match="no readable checkpoint"):
    trainer.train_and_evaluate(tiny_config(**{"train.num_steps": 8}), str(workdir))


def test_not_a_checkpoint_directory_is_named(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match=str(tmp_path)):
    checkpoints.restore_params(str(tmp_path))


def test_checkpoint_shapes_that_do_not_fit_the_config(six_steps):
  config = tiny_config(**{"model.hidden_size": 64})
  with pytest.raises(Exception, match="step"):
    trainer.evaluate_checkpoint(config, str(six_steps))


def test_nan_steps_are_skipped_then_the_run_stops(tmp_path, monkeypatch):
  real_global_batch = trainer.mesh_lib.global_batch
  calls = []

  def poisoned(batch, mesh):
    calls.append(1)
    if len(calls) > 4:  # from step 5 on every batch has a NaN weight
      batch = dict(batch, masked_lm_weights=np.full_like(batch["masked_lm_weights"], np.nan))
    return real_global_batch(batch, mesh)

  monkeypatch.setattr(trainer.mesh_lib, "global_batch", poisoned)
  config = tiny_config(**{"train.num_steps": 20, "train.max_nonfinite_in_row": 3})
  with pytest.raises(loop.TrainingStopped, match="3 non-finite"):
    trainer.train_and_evaluate(config, str(tmp_path))
  # Skipped updates leave the parameters as they were: every checkpoint written is a good one.
  params, _, step = checkpoints.restore_params_and_step(str(tmp_path))
  assert step in (3, 6)
  assert all(np.isfinite(np.asarray(x)).all() for x in __import__("jax").tree.leaves(params))
  losses = read_losses(tmp_path)
  assert np.isfinite(losses[4]) and not np.isfinite(losses[5])


def test_sigterm_saves_the_current_step_and_exits_cleanly(tmp_path):
  flags = ["--config.train.num_steps=400", "--config.checkpoint.every_steps=1000",
           "--config.eval.every_steps=1000"]
  from test_trainer import _tiny_flags

  args = [a for a in _tiny_flags() if not a.startswith(("--config.train.num_steps",
                                                        "--config.checkpoint.every_steps",
                                                        "--config.eval.every_steps"))]
  env = subprocess_env()
  proc = subprocess.Popen(
      [sys.executable, "-m", "mebert.train", "--config=configs/pretrain/tiny.py",
       f"--workdir={tmp_path}", *args, *flags], cwd=REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if (tmp_path / "metrics.jsonl").exists() and max(read_losses(tmp_path) or {0: 0}) >= 3:
      break
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  steps = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
  assert steps and 3 <= max(steps) < 400
  assert "SIGTERM received" in err


def test_a_run_writes_nothing_outside_its_workdir(tmp_path, monkeypatch):
  """No cache in the home directory, nothing in the working directory: everything a run keeps
  (vocabulary, checkpoints, logs) is under --workdir."""
  home, cwd = tmp_path / "home", tmp_path / "cwd"
  home.mkdir()
  cwd.mkdir()
  monkeypatch.setenv("HOME", str(home))
  monkeypatch.delenv("MEBERT_CACHE_DIR", raising=False)
  monkeypatch.chdir(cwd)
  trainer.train_and_evaluate(tiny_config(**{"train.num_steps": 2}), str(tmp_path / "w"))
  assert list(home.rglob("*")) == [] and list(cwd.rglob("*")) == []
  assert (tmp_path / "w" / "vocab" / "spm.model").exists()
