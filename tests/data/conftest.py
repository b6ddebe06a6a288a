"""Fixtures of the data tests: a small sentencepiece model and a corpus every Python install has."""

import pathlib
import re

import pytest
from pydoc_data.topics import topics

from mebert.data import config, tokenizer


@pytest.fixture(scope="session")
def topics_file(tmp_path_factory) -> pathlib.Path:
  """Python's help() topics (0.45 MB of English) as a local corpus file, one topic per document."""
  path = tmp_path_factory.mktemp("corpus") / "topics.txt"
  docs = [re.sub(r"\n\s*\n", "\n", topics[k]).strip() for k in sorted(topics)]
  path.write_text("\n\n".join(docs), encoding="utf-8")
  return path


@pytest.fixture(scope="session")
def spm_tok(tmp_path_factory) -> tokenizer.Tokenizer:
  prefix = tmp_path_factory.mktemp("spm") / "spm"
  path = tokenizer.train_sentencepiece([topics[k] for k in sorted(topics)], vocab_size=2000,
                                       output_prefix=str(prefix), lowercase=True)
  return tokenizer.load_tokenizer(path)


@pytest.fixture
def data_config(topics_file):
  c = config.default_data_config()
  c.corpus = str(topics_file)
  c.seq_len = 64
  c.max_predictions_per_seq = 10
  c.read_threads = 1
  c.prefetch_buffer_size = 8
  return c


@pytest.fixture(scope="session")
def small_file(tmp_path_factory) -> pathlib.Path:
  """A ~50 KB slice of the topics, for tests that train a tokenizer and need not much text."""
  path = tmp_path_factory.mktemp("small") / "small.txt"
  docs = [re.sub(r"\n\s*\n", "\n", topics[k]).strip() for k in sorted(topics)]
  text = ""
  for d in docs:
    if len(text) > 50_000:
      break
    text += d + "\n\n"
  path.write_text(text, encoding="utf-8")
  return path
