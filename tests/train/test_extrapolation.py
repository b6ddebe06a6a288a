"""Length extrapolation through the trainer: `--mode=eval --config.data.seq_len=N` beyond the
training length evaluates an encoding that extrapolates, and stops a learned table with the reason."""

import json
import subprocess
import sys

import numpy as np
import pytest
from tiny_run import REPO, subprocess_env, tiny_config


def _config(encoding, **overrides):
  # Trained at 32 tokens; the learned table has exactly 32 rows.
  return tiny_config(**{"model.position_encoding": encoding, "train.num_steps": 2,
                        "checkpoint.every_steps": 2, "eval.every_steps": 2, "eval.num_batches": 1,
                        "model.dropout_rate": 0.0, "model.attention_dropout_rate": 0.0,
                        **overrides})


@pytest.fixture(scope="module")
def rotary_run(tmp_path_factory):
  """A relative --workdir, as on the command line (Orbax itself wants absolute paths)."""
  import os

  from mebert.train import trainer

  parent = tmp_path_factory.mktemp("extrapolation")
  cwd = os.getcwd()
  os.chdir(parent)
  try:
    trainer.train_and_evaluate(_config("rotary"), "rotary")
  finally:
    os.chdir(cwd)
  return parent / "rotary"


def test_eval_at_twice_the_training_length(rotary_run):
  from mebert.train import trainer

  config = _config("rotary", **{"data.seq_len": 64, "data.max_predictions_per_seq": 10})
  metrics = trainer.evaluate_checkpoint(config, str(rotary_run))
  assert metrics["seq_len"] == 64 and metrics["step"] == 2 and np.isfinite(metrics["mlm_accuracy"])
  # Next to, not over, the training-length eval.
  saved = json.loads((rotary_run / "eval_step_2_len64.json").read_text())
  assert saved["mlm_accuracy"] == metrics["mlm_accuracy"]
  assert "seq_len" not in json.loads((rotary_run / "eval_step_2.json").read_text())
  again = trainer.evaluate_checkpoint(_config("rotary"), str(rotary_run))
  assert again["seq_len"] == 32 and not (rotary_run / "eval_step_2_len32.json").exists()


def test_learned_table_refuses_a_longer_eval_with_the_reason(tmp_path):
  """From the command line: one line naming the encoding and the limit, exit status 1, before any
  checkpoint is read (the vocabulary, trained first, is all the workdir gets)."""
  result = subprocess.run(
      [sys.executable, "-m", "mebert.train", f"--config={REPO / 'configs/pretrain/tiny.py'}",
       f"--workdir={tmp_path / 'learned'}", "--mode=eval", "--config.data.vocab_size=400",
       "--config.data.seq_len=256", "--config.data.max_predictions_per_seq=39"],
      capture_output=True, text=True, env=subprocess_env(), timeout=300)
  assert result.returncode == 1, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "'learned' position table cannot extrapolate" in last
  assert "sequence length 256 exceeds model.max_position_embeddings=128" in last
  assert "rotary" in last  # it names the encodings that would
  assert not (tmp_path / "learned" / "checkpoints").exists()
