"""Helpers of the compression tests (a module of its own: `from conftest import` is ambiguous
when several test folders have a conftest.py and pytest-xdist imports them in one worker)."""

import random

from mebert.tasks.defaults import finetune_defaults

POSITIVE = ("good", "great", "funny", "fine")
WORDS = ("the a film movie plot actor story boring sad bad awful paris london said today visited "
         "is was not very").split() + list(POSITIVE)


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
  c.init.random = True
  c.model.hidden_size, c.model.num_layers, c.model.num_heads = 32, 2, 2
  c.model.intermediate_size, c.model.max_position_embeddings = 64, 32
  c.train.batch_size, c.eval.batch_size = 16, 32
  c.train.learning_rate, c.train.warmup_steps, c.train.num_steps = 3e-3, 2, 40
  c.train.log_every, c.eval.every_steps = 20, 40
  c.checkpoint.async_save = False
  return c
