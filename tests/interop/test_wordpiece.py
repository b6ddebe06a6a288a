"""mebert.interop.wordpiece (tokenizers only) gives what transformers' BertTokenizerFast gives."""

import csv
import shutil

import numpy as np
import pytest

from mebert.interop.errors import InteropError
from mebert.interop.wordpiece import WordPiece

transformers = pytest.importorskip("transformers")


def sst2_sentences(shared_data, n=300):
  path = shared_data / "sst2" / "train.tsv"
  if not path.is_file():
    pytest.skip(f"{path} not found")
  with open(path, encoding="utf-8") as f:
    rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
  return [r[0] for r in rows[1:n + 1]]


def conll_sentences(shared_data, n=300):
  path = shared_data / "conll2003" / "train.txt"
  if not path.is_file():
    pytest.skip(f"{path} not found")
  sentences, words = [], []
  with open(path, encoding="utf-8") as f:
    for line in f:
      parts = line.split()
      if not parts or parts[0] == "-DOCSTART-":
        if words:
          sentences.append(words)
          words = []
        if len(sentences) == n:
          break
        continue
      words.append(parts[0])
  return sentences


def chinese_reviews(shared_data, n=200):
  path = shared_data / "chnsenticorp-htl" / "ChnSentiCorp_htl_all.csv"
  if not path.is_file():
    pytest.skip(f"{path} not found")
  with open(path, encoding="utf-8-sig", newline="") as f:
    rows = list(csv.reader(f))[1:]
  reviews = [r[1] if len(r) > 1 else "" for r in rows]
  empty = [t for t in reviews if not t.strip()]
  return reviews[:n] + empty[:1]  # the data set's empty review is a case of its own


def assert_same(ours, theirs, rows):
  for key in ("input_ids", "attention_mask", "token_type_ids"):
    np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
  word_ids = np.array([[-1 if w is None else w for w in theirs.word_ids(i)] for i in range(rows)])
  np.testing.assert_array_equal(ours["word_ids"], word_ids, err_msg="word_ids")


@pytest.fixture(scope="module", params=["tokenizer.json", "vocab.txt"])
def pair(request, minilm_dir, tmp_path_factory):
  """(ours, BertTokenizerFast) from MiniLM's tokenizer.json, or from a bare vocab.txt + config."""
  if request.param == "tokenizer.json":
    return WordPiece.from_file(str(minilm_dir)), transformers.BertTokenizerFast.from_pretrained(minilm_dir)
  folder = tmp_path_factory.mktemp("vocab_only")
  for name in ("vocab.txt", "tokenizer_config.json"):
    shutil.copy(minilm_dir / name, folder / name)
  ours = WordPiece.from_file(str(folder / "vocab.txt"))
  assert ours.path.endswith("vocab.txt") and ours.lowercase
  return ours, transformers.BertTokenizerFast.from_pretrained(folder)


def test_sst2_singles_and_truncated_pairs(pair, shared_data):
  ours, hf = pair
  texts = sst2_sentences(shared_data)
  assert_same(ours.encode(texts, max_length=64),
              hf(texts, truncation=True, max_length=64, padding="longest", return_tensors="np"),
              len(texts))
  a, b = texts[:-1], texts[1:]
  theirs = hf(a, b, truncation="longest_first", max_length=24, padding="longest",
              return_tensors="np")
  assert_same(ours.encode(a, b, max_length=24, truncation="longest_first"), theirs, len(a))
  assert (theirs["attention_mask"].sum(1) == 24).mean() > 0.3  # truncation really happened


def test_conll_pre_split_words(pair, shared_data):
  ours, hf = pair
  words = conll_sentences(shared_data)
  theirs = hf(words, is_split_into_words=True, truncation=True, max_length=32, padding="max_length",
              pad_to_multiple_of=8, return_tensors="np")
  mine = ours.encode(words, is_split_into_words=True, max_length=32, padding="max_length",
                     pad_to_multiple_of=8)
  assert mine["input_ids"].shape == (len(words), 32)
  assert_same(mine, theirs, len(words))


def test_chinese_reviews(pair, shared_data):
  ours, hf = pair
  texts = chinese_reviews(shared_data)
  assert_same(ours.encode(texts, max_length=128),
              hf(texts, truncation=True, max_length=128, padding="longest", return_tensors="np"),
              len(texts))


def test_cased_vocab(minilm_dir, shared_data, tmp_path):
  """do_lower_case=false in tokenizer_config.json is honoured (CoNLL text keeps its case)."""
  shutil.copy(minilm_dir / "vocab.txt", tmp_path / "vocab.txt")
  (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false}')
  ours = WordPiece.from_file(str(tmp_path))
  hf = transformers.BertTokenizerFast.from_pretrained(tmp_path)
  assert not ours.lowercase
  texts = [" ".join(w) for w in conll_sentences(shared_data, 100)]
  assert_same(ours.encode(texts, max_length=64),
              hf(texts, truncation=True, max_length=64, padding="longest", return_tensors="np"),
              len(texts))


def test_saved_tokenizer_loads_in_transformers(minilm_dir, tmp_path):
  ours = WordPiece.from_file(str(minilm_dir / "vocab.txt"))
  ours.save(str(tmp_path))
  hf = transformers.BertTokenizerFast.from_pretrained(tmp_path)
  texts = ["Hello, World! [MASK] naïve café", "我们住的房间很干净"]
  assert_same(ours.encode(texts), hf(texts, padding="longest", return_tensors="np"), 2)


def test_vocab_without_mask_is_one_line_error(minilm_dir, tmp_path):
  lines = (minilm_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")
  (tmp_path / "vocab.txt").write_text("\n".join(t for t in lines if t != "[MASK]"), encoding="utf-8")
  with pytest.raises(InteropError, match=r"vocab\.txt: vocabulary has no \[MASK\] token") as e:
    WordPiece.from_file(str(tmp_path / "vocab.txt"))
  assert "\n" not in str(e.value)
