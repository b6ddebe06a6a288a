"""Fixtures of the compression tests: a small WordPiece vocabulary, synthetic sentiment data, a tiny
fine-tuning config and a fine-tuned-shaped workdir with random weights."""

import pytest
from compress_helpers import WORDS, synthetic_tsv, tiny_config  # pylint: disable=import-error


@pytest.fixture(scope="module")
def optimized_xla():
  """As tests/tasks/test_finetune.py: modules that train many steps (distillation, QAT) ask for it
  with pytestmark; ~100 train steps run ~17x faster optimised."""
  import jax

  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="session")
def vocab_file(tmp_path_factory) -> str:
  folder = tmp_path_factory.mktemp("vocab")
  pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!"] + WORDS + ["##s", "##ly"]
  (folder / "vocab.txt").write_text("\n".join(pieces) + "\n", encoding="utf-8")
  return str(folder / "vocab.txt")


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
