"""A tiny pretraining config for end-to-end tests, and a reader of the losses a run logged."""

import importlib.util
import json
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]


def tiny_config(**overrides):
  spec = importlib.util.spec_from_file_location("tiny_cfg", REPO / "configs/pretrain/tiny.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.model.hidden_size, c.model.num_layers, c.model.num_heads = 32, 1, 2
  c.model.intermediate_size, c.model.max_position_embeddings = 64, 32
  c.model.dropout_rate = c.model.attention_dropout_rate = 0.1  # resume must replay dropout too
  c.data.vocab_size, c.data.seq_len, c.data.max_predictions_per_seq = 400, 32, 5
  c.train.batch_size, c.train.num_steps, c.train.warmup_steps = 8, 8, 2
  c.train.log_every, c.checkpoint.every_steps, c.eval.every_steps = 1, 3, 4
  c.eval.num_batches, c.eval.batch_size = 2, 8
  for key, value in overrides.items():
    section, name = key.split(".")
    c[section][name] = value
  return c


def read_losses(workdir) -> dict[int, float]:
  losses = {}
  for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    if record["split"] == "train":
      losses[record["step"]] = record["loss"]  # a resumed run rewrites the steps it redoes
  return losses


def subprocess_env() -> dict:
  """The JAX settings of tests/conftest.py for a `python -m mebert.train` child process, so its
  numbers can be compared bit for bit with a run made inside the test process."""
  import os

  return dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="8",
              JAX_DISABLE_MOST_OPTIMIZATIONS="true", PYTHONPATH=str(REPO),
              JAX_COMPILATION_CACHE_DIR=os.environ.get("MEBERT_TEST_JAX_CACHE",
                                                       "/tmp/mebert-test-jax-cache"))
