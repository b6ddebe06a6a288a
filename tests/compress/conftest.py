"""Fixtures of the compression tests: a small WordPiece vocabulary, synthetic sentiment data, a tiny
fine-tuning config and a fine-tuned-shaped workdir with random weights."""

import random

import pytest

from mebert.tasks.defaults import finetune_defaults

POSITIVE = ("good", "great", "funny", "fine")
WORDS = ("the a film movie plot actor story boring sad bad awful paris london said today visited "
         "is was not very").split() + list(POSITIVE)


@pytest.fixture(scope="session")
def vocab_file(tmp_path_factory) -> str:
  folder = tmp_path_factory.mktemp("vocab")
  pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!"] + WORDS + ["##s", "##ly"]
  (folder / "vocab.txt").write_text("\n".join(pieces) + "\n", encoding="utf-8")
  return str(folder / "vocab.txt")


def synthetic_tsv(path, n: int, seed: int = 0) -> str:
  """sentence<TAB>label, label 1 when a positive word occurs: learnable in a few steps."""
  rng = random.Random(seed)
  lines = ["sentence\tlabel"]
  for _ in range(n):
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
    lines.append(" ".join(words) + "\t" + str(int(any(w in POSITIVE for w in words))))
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return str(path)


def tiny_config(vocab: str, train_files: str):
  c = finetune_defaults()
  c.task.kind = "classification"
  c.data.vocab, c.data.train_files, c.data.holdout_fraction = vocab, train_files, 0.25
  c.data.seq_len, c.data.buckets = 32, (32,)
  c.model.hidden_size, c.model.num_layers, c.model.num_heads = 32, 2, 2
  c.model.intermediate_size, c.model.max_position_embeddings = 64, 32
  c.train.batch_size, c.eval.batch_size = 16, 32
  c.train.learning_rate, c.train.warmup_steps, c.train.num_steps = 3e-3, 2, 40
  c.train.log_every, c.eval.every_steps = 20, 40
  c.checkpoint.async_save = False
  return c


@pytest.fixture(scope="module")
def random_task_workdir(vocab_file, tmp_path_factory):
  """(config, workdir) of a fine-tuned-shaped checkpoint with random weights (no training): what
  eval/predict read, made in a second."""
  import jax
  import jax.numpy as jnp
  import flax.linen as nn
  import numpy as np

  from mebert.model.config import ModelConfig
  from mebert.tasks.batching import TaskTokenizer
  from mebert.tasks.model import BertForTask
  from mebert.train.checkpoints import save_params_checkpoint

  root = tmp_path_factory.mktemp("random_task")
  c = tiny_config(vocab_file, synthetic_tsv(root / "train.tsv", 256, seed=1))
  c.task.labels = ("0", "1")
  cfg = ModelConfig.from_dict(c.model, vocab_size=TaskTokenizer(vocab_file).vocab_size)
  ids = jnp.zeros((1, 8), jnp.int32)
  params = BertForTask(cfg, "classification", 2).init(jax.random.key(5), ids, ids, ids + 1)
  params = jax.tree.map(np.array, nn.unbox(params["params"]))  # writable copies
  params["classifier"]["kernel"] *= 20.0  # confident predictions: far from 50/50 ties
  workdir = root / "work"
  save_params_checkpoint(str(workdir), params, c.to_dict(), step=7)
  return c, workdir
