"""Fixtures of the compression tests: a small WordPiece vocabulary, synthetic sentiment data and a
tiny fine-tuned workdir (trained once per module)."""

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
def tiny_task_run(vocab_file, tmp_path_factory):
  """(config, workdir, training result) of a tiny classifier trained for 40 steps."""
  from mebert.tasks import finetune

  root = tmp_path_factory.mktemp("task")
  c = tiny_config(vocab_file, synthetic_tsv(root / "train.tsv", 640))
  workdir = root / "work"
  return c, workdir, finetune.train_and_evaluate(c, str(workdir))
