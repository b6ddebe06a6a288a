"""Fixtures of the fine-tuning tests: a small WordPiece vocabulary, tiny configs, data slices.

Every model here is tiny (hidden 32, one layer, seq 32) and each training run is shared by the
tests that read it (module-scoped fixtures), so the default suite compiles each step once per run.
"""

import os
import pathlib
import random

import pytest

from mebert.tasks.defaults import finetune_defaults

SHARED_DATA = pathlib.Path(os.environ.get(  # as tests/conftest.py's
    "MEBERT_SHARED_DATA", pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"))
WORDS = ("the a film movie good bad great awful plot actor story boring funny sad "
         "paris london berlin john mary smith company bank said today visited").split()


def synthetic_sentences(n: int, seed: int = 0) -> list[str]:
  rng = random.Random(seed)
  return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def _texts(shared: pathlib.Path | None) -> list[str]:
  # Every letter as a first and a following piece, twice (min_frequency=2): without ../shared/data, a real word such as a name still
  # splits into pieces instead of becoming [UNK].
  letters = "abcdefghijklmnopqrstuvwxyz"
  texts = synthetic_sentences(500) + [" ".join(a + b for a in letters for b in letters)] * 2
  if shared is None:
    return texts
  for name in ("sst2/train.tsv", "mrpc/train.tsv", "rte/train.tsv"):
    path = shared / name
    if path.is_file():
      lines = path.read_text(encoding="utf-8-sig").splitlines()[1:400]
      texts += [cell for line in lines for cell in line.split("\t") if len(cell) > 12]
  conll = shared / "conll2003" / "train.txt"
  if conll.is_file():
    texts += [line.split()[0] for line in conll.read_text().splitlines()[:4000] if line.strip()]
  return texts


@pytest.fixture(scope="session")
def vocab_file(tmp_path_factory) -> str:
  """A ~800-token uncased WordPiece vocab.txt trained on slices of the shared data (or synthetic
  text): small embeddings, and real words still split into several pieces."""
  from tokenizers import BertWordPieceTokenizer

  shared = SHARED_DATA if SHARED_DATA.is_dir() else None
  tok = BertWordPieceTokenizer(lowercase=True)
  tok.train_from_iterator(_texts(shared), vocab_size=800, min_frequency=2)
  folder = tmp_path_factory.mktemp("vocab")
  tok.save_model(str(folder))
  return str(folder / "vocab.txt")


@pytest.fixture(scope="session")
def tiny_config():
  """A factory: tiny_config(kind, vocab, **{"section.key": value}) -> a fine-tuning ConfigDict."""
  return make_tiny_config


@pytest.fixture(scope="session")
def sentences():
  return synthetic_sentences


def make_tiny_config(kind: str = "classification", vocab: str = "", **overrides):
  c = finetune_defaults()
  c.task.kind = kind
  c.data.vocab = vocab
  c.init.random = True  # tiny random models; a test that sets init.hf/checkpoint unsets it
  c.data.seq_len = 32
  c.data.buckets = (32,)  # one compiled shape per run; bucketing has its own tests
  c.model.hidden_size, c.model.num_layers, c.model.num_heads = 32, 1, 2
  c.model.intermediate_size, c.model.max_position_embeddings = 64, 32
  c.train.batch_size, c.eval.batch_size = 16, 32
  c.train.learning_rate, c.train.warmup_steps = 1e-3, 2
  c.train.log_every = 5
  c.checkpoint.async_save = False
  for key, value in overrides.items():
    section, name = key.split(".")
    c[section][name] = value
  return c
