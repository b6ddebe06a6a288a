"""BERT WordPiece tokenization through the `tokenizers` library, matching transformers' BertTokenizerFast.

BertTokenizerFast is a thin Python layer over a `tokenizers.Tokenizer` (BertNormalizer,
BertPreTokenizer, WordPiece, a [CLS] A [SEP] (B [SEP]) template). This module builds the same
tokenizer from a vocab.txt (or loads a tokenizer.json) and reproduces the parts of its call that
tasks need (pairs, pre-split words, `longest_first` truncation, padding, word ids), returning
numpy arrays, so neither the trainer nor the tasks need transformers at runtime. Tests check the
outputs id for id against BertTokenizerFast on SST-2, CoNLL-2003 and Chinese reviews.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from mebert.interop.errors import InteropError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def read_vocab_txt(path: str) -> dict[str, int]:
  """vocab.txt -> {token: id}; a token's id is its line number (as transformers' load_vocab)."""
  with open(path, encoding="utf-8") as f:
    text = f.read()
  # split("\n"), not splitlines(): the latter also splits at \x1c, \u2028, ... and would shift ids.
  lines = text.split("\n")
  if lines and not lines[-1]:
    lines.pop()
  vocab: dict[str, int] = {}
  for i, line in enumerate(lines):
    vocab[line.rstrip("\r")] = i
  if not vocab:
    raise InteropError(f"{path}: empty vocabulary file")
  return vocab


def _infer_lowercase(vocab: dict[str, int]) -> bool:
  """An uncased vocab has no token with an upper-case letter outside the [SPECIAL] tokens."""
  return not any(t != t.lower() for t in vocab if not (t.startswith("[") and t.endswith("]")))


def _tokenizer_config(folder: str) -> dict:
  path = os.path.join(folder, "tokenizer_config.json")
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


class FastTokenizer:
  """A `tokenizers.Tokenizer` with five specials (pad, unk, cls, sep, mask: BERT's [PAD] [UNK]
  [CLS] [SEP] [MASK] by default) and the post-processor it carries ([CLS] A [SEP] (B [SEP]) for
  BERT); `encode` mirrors transformers' fast-tokenizer __call__ (see module doc)."""

  def __init__(self, tokenizer, path: str, lowercase: bool,
               specials: Sequence[str] = SPECIAL_TOKENS, family: str = "BERT"):
    self.tokenizer = tokenizer
    self.path = path
    self.lowercase = lowercase
    self.specials = tuple(specials)
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    for token in self.specials:
      if token not in vocab:
        raise InteropError(f"{path}: vocabulary has no {token} token ({family} needs "
                           f"{' '.join(self.specials)})")
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
        vocab[t] for t in self.specials)
    self.vocab_size = max(vocab.values()) + 1

  def encode(self, texts: Sequence, pairs: Sequence | None = None, *,
             is_split_into_words: bool = False, max_length: int | None = None,
             truncation: str | None = "longest_first", padding: str | None = "longest",
             pad_to_multiple_of: int | None = None) -> dict[str, np.ndarray]:
    """Like BertTokenizerFast(texts, pairs, truncation=..., max_length=..., padding=...).

    Returns int32 arrays [B, L]: input_ids, attention_mask, token_type_ids, and word_ids (-1 where
    transformers' word_ids() gives None: specials and padding). `truncation` is one of
    "longest_first", "only_first", "only_second" or None; it needs `max_length`. `padding` is
    "longest", "max_length" or None (then the rows are lists, not a 2-D array).
    """
    inputs = list(texts) if pairs is None else list(zip(texts, pairs))
    tok = self.tokenizer
    try:
      if truncation and max_length:
        tok.enable_truncation(max_length, stride=0, strategy=truncation, direction="right")
      encodings = tok.encode_batch(inputs, is_pretokenized=is_split_into_words,
                                   add_special_tokens=True)
    finally:
      tok.no_truncation()
    rows = {
        "input_ids": [e.ids for e in encodings],
        "attention_mask": [e.attention_mask for e in encodings],
        "token_type_ids": [e.type_ids for e in encodings],
        "word_ids": [[-1 if w is None else w for w in e.word_ids] for e in encodings],
    }
    if not padding:
      return rows
    width = max([len(r) for r in rows["input_ids"]] + [0])
    if padding == "max_length" and max_length:
      width = max(width, max_length)
    if pad_to_multiple_of:
      width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    fill = {"input_ids": self.pad_id, "attention_mask": 0, "token_type_ids": 0, "word_ids": -1}
    out = {}
    for key, values in rows.items():
      arr = np.full((len(values), width), fill[key], np.int32)
      for i, row in enumerate(values):
        arr[i, :len(row)] = row
      out[key] = arr
    return out

class WordPiece(FastTokenizer):
  """A BERT WordPiece tokenizer, as BertTokenizerFast builds it from vocab.txt or tokenizer.json."""

  def __init__(self, tokenizer, path: str, lowercase: bool):
    from tokenizers import models

    if not isinstance(tokenizer.model, models.WordPiece):
      raise InteropError(f"{path}: not a WordPiece tokenizer ({type(tokenizer.model).__name__})")
    super().__init__(tokenizer, path, lowercase)

  @classmethod
  def from_vocab(cls, path: str, *, lowercase: bool | None = None,
                 strip_accents: bool | None = None) -> "WordPiece":
    """Builds BertTokenizerFast's pipeline from a vocab.txt. `lowercase=None` reads
    do_lower_case from a tokenizer_config.json beside the file, else infers it from the vocab."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = read_vocab_txt(path)
    settings = _tokenizer_config(os.path.dirname(os.path.abspath(path)))
    if lowercase is None:
      lowercase = settings.get("do_lower_case", _infer_lowercase(vocab))
    if strip_accents is None:
      strip_accents = settings.get("strip_accents")
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
      raise InteropError(f"{path}: vocabulary has no {missing[0]} token (BERT needs "
                         f"{' '.join(SPECIAL_TOKENS)})")
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    # strip_accents=None follows `lowercase`, as in BertTokenizerFast.
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=settings.get("tokenize_chinese_chars", True),
        strip_accents=strip_accents, lowercase=bool(lowercase))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.WordPiece(prefix="##")
    # Specials are matched as whole tokens in raw text (a literal "[MASK]" -> its id), as in HF.
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return cls(tok, path, bool(lowercase))

  @classmethod
  def from_file(cls, path: str, *, lowercase: bool | None = None) -> "WordPiece":
    """A folder (tokenizer.json preferred, else vocab.txt), a tokenizer.json or a vocab.txt."""
    if os.path.isdir(path):
      found = [os.path.join(path, n) for n in _TOKENIZER_FILES
               if os.path.isfile(os.path.join(path, n))]
      if not found:
        raise InteropError(f"{path}: no tokenizer.json or vocab.txt in this folder")
      path = found[0]
    if not os.path.isfile(path):
      raise InteropError(f"{path}: tokenizer file not found")
    if not path.endswith(".json"):
      return cls.from_vocab(path, lowercase=lowercase)
    from tokenizers import Tokenizer

    try:
      tok = Tokenizer.from_file(path)
    except Exception as e:  # the Rust error is multi-line: keep its first line
      raise InteropError(f"{path}: not a tokenizers tokenizer.json "
                         f"({str(e).splitlines()[0][:200]})") from None
    if tok.truncation or tok.padding:  # saved settings would silently override encode()'s
      tok.no_truncation()
      tok.no_padding()
    return cls(tok, path, _json_lowercase(json.loads(tok.to_str()).get("normalizer")))

  def save(self, folder: str, *, model_max_length: int = 512) -> list[str]:
    """Writes tokenizer.json, vocab.txt, tokenizer_config.json and special_tokens_map.json in the
    form transformers' BertTokenizerFast.from_pretrained reads; returns the file names."""
    os.makedirs(folder, exist_ok=True)
    self.tokenizer.save(os.path.join(folder, "tokenizer.json"))
    vocab = self.tokenizer.get_vocab(with_added_tokens=True)
    by_id = [""] * self.vocab_size
    for token, i in vocab.items():
      by_id[i] = token
    with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as f:
      f.write("".join(t + "\n" for t in by_id))
    specials = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"),
                        SPECIAL_TOKENS))
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": self.lowercase,
              "tokenize_chinese_chars": True, "strip_accents": None,
              "model_max_length": model_max_length, **specials}
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2)
    with open(os.path.join(folder, "special_tokens_map.json"), "w", encoding="utf-8") as f:
      json.dump(specials, f, indent=2)
    return ["tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"]


def _json_lowercase(normalizer) -> bool:
  """Whether a tokenizer.json normalizer lowercases (BertNormalizer flag or a Lowercase step)."""
  if not normalizer:
    return False
  if normalizer.get("type") == "Lowercase":
    return True
  if "lowercase" in normalizer:
    return bool(normalizer["lowercase"])
  return any(_json_lowercase(n) for n in normalizer.get("normalizers", []))
