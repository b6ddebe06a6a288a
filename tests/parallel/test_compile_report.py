"""--mode=compile: per-device memory and FLOPs before launching; FSDP divides bert_base's state."""

import json
import os
import subprocess
import sys

import pytest

import parallel_helpers as H
from mebert.train import compile_report


def test_bert_base_fsdp8_state_is_at_most_a_sixth_per_device(tmp_path):
  """Abstract state only: 8-way FSDP keeps <= 1/6 of the parameters and Adam moments per device."""
  config = H.load_config("bert_base")
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 8, 1
  report = compile_report.state_memory(compile_report.experiment(config, str(tmp_path)))
  assert 105e6 < report["param_count"] < 115e6  # BERT-base
  assert report["opt_state_bytes_unsharded"] >= 2 * report["param_bytes_unsharded"]  # mu and nu
  assert report["state_bytes_per_device"] * 6 <= report["state_bytes_unsharded"]
  assert report["param_bytes_per_device"] * 6 <= report["param_bytes_unsharded"]
  assert report["state_sharding_factor"] > 7.5  # only a few bias vectors stay whole
  assert not (tmp_path / "vocab").exists()  # a given model.vocab_size needs no tokenizer


def test_compile_report_of_the_tiny_model_on_2x2x2(tmp_path):
  config = H.load_config("tiny")
  config.model.hidden_size, config.model.num_layers, config.model.num_heads = 32, 1, 2
  config.model.intermediate_size, config.model.max_position_embeddings = 64, 32
  config.model.vocab_size = 128
  config.data.seq_len, config.data.max_predictions_per_seq, config.train.batch_size = 32, 5, 8
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
  report = compile_report.compile_and_report(config, str(tmp_path),
                                             compiler_options=H.FAST_COMPILE)
  assert report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2} and report["devices"] == 8
  assert 1.5 < report["state_sharding_factor"] < 8
  for key in ("argument_size_in_bytes", "temp_size_in_bytes", "peak_bytes_per_device_estimate",
              "flops_per_step_per_device"):
    assert report[key] > 0, key
  assert report["argument_size_in_bytes"] >= report["state_bytes_per_device"]
  # Training FLOPs per token: ~6 per (non-embedding) parameter plus attention; loose bounds.
  assert 0.3 < report["flops_per_token"] / (6 * report["param_count"]) < 20
  text = compile_report.format_report(report)
  assert "per device" in text and "FLOPs per step" in text
  json.dumps(report)  # what __main__ prints


@pytest.mark.slow
def test_cli_compiles_bert_base_under_8_way_fsdp(tmp_path):
  """The documented command, on 8 fake CPU devices; takes a minute or two to compile."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="8", PYTHONPATH=str(H.REPO))
  out = subprocess.run(
      [sys.executable, "-m", "mebert.train", "--config=configs/pretrain/bert_base.py",
       f"--workdir={tmp_path}", "--mode=compile", "--config.mesh.data=1", "--config.mesh.fsdp=8",
       "--config.train.batch_size=64"],
      cwd=H.REPO, env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert report["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  assert report["state_bytes_per_device"] * 6 <= report["state_bytes_unsharded"]
  assert report["argument_size_in_bytes"] < report["state_bytes_unsharded"] / 6 + 2**20
  assert 4e8 < report["flops_per_token"] < 8e8  # ~6 x 86M non-embedding parameters
  assert "params + opt" in out.stderr
