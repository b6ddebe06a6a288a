"""Tokenizers: sentencepiece (trained here) and WordPiece (BERT's vocab.txt / tokenizer.json).

Both expose the same small surface the data pipeline needs: the ids of the five BERT specials,
`word_start` (which ids begin a word, for whole-word masking) and batch encoding. Specials are never
produced from raw text by the sentencepiece model (they are control symbols); the WordPiece model,
like Hugging Face's, does turn a literal "[MASK]" in text into the id, so the pipeline maps special
ids found in corpus text to [UNK].

CLI: python -m mebert.data.tokenizer --corpus=builtin --vocab_size=8192 --output=/tmp/spm
"""

from __future__ import annotations

import abc
import argparse
import io
import json
import logging
import os
from collections.abc import Iterable, Sequence

import numpy as np

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_SPM_NAME = "spm.model"


class Tokenizer(abc.ABC):
  """What the pipeline and trainer use; `vocab_size` is the size the model's embedding must have."""

  path: str
  vocab_size: int
  pad_id: int
  unk_id: int
  cls_id: int
  sep_id: int
  mask_id: int
  word_start: np.ndarray  # bool[vocab_size]; True where a token begins a word (specials True)

  def _set_specials(self, token_to_id) -> None:
    ids = {}
    for tok in SPECIAL_TOKENS:
      i = token_to_id(tok)
      if i is None or i < 0:
        raise ValueError(f"{self.path}: vocabulary has no {tok} token (needs all of {' '.join(SPECIAL_TOKENS)})")
      ids[tok] = int(i)
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (ids[t] for t in SPECIAL_TOKENS)

  @property
  def special_ids(self) -> np.ndarray:
    return np.array([self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id], np.int32)

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """Token ids of text, without [CLS]/[SEP]."""

  @abc.abstractmethod
  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    """encode() of many texts at once (multithreaded in C++/Rust)."""

  @abc.abstractmethod
  def decode(self, ids) -> str:
    """Text of ids; specials are kept, as "[CLS]" etc."""

  @abc.abstractmethod
  def id_to_token(self, i: int) -> str:
    """The vocabulary entry of an id (a sentencepiece piece or a WordPiece token)."""

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.path!r}, vocab_size={self.vocab_size})"


class SentencePieceTokenizer(Tokenizer):
  """A sentencepiece model; lowercasing, if any, is part of the model's normalizer."""

  def __init__(self, model_proto: bytes, path: str = "<bytes>"):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top

    self.path = path
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = self._sp.get_piece_size()
    self._set_specials(lambda t: self._sp.piece_to_id(t) if self._sp.id_to_piece(self._sp.piece_to_id(t)) == t else None)
    pieces = [self._sp.id_to_piece(i) for i in range(self.vocab_size)]
    self.word_start = np.array([p.startswith("\u2581") for p in pieces], bool)
    self.word_start[self.special_ids] = True
    self._control = np.zeros(self.vocab_size, bool)
    self._control[self.special_ids] = True

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return self._sp.encode(list(texts), num_threads=os.cpu_count() or 1)

  def decode(self, ids) -> str:
    # sentencepiece drops control symbols when decoding; keep them visible by decoding runs between.
    out, run = [], []
    for i in (int(i) for i in ids):
      if self._control[i]:
        if run:
          out.append(self._sp.decode(run))
          run = []
        out.append(SPECIAL_TOKENS[int(np.flatnonzero(self.special_ids == i)[0])])
      else:
        run.append(i)
    if run:
      out.append(self._sp.decode(run))
    return " ".join(out)

  def id_to_token(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))


class TokenizersBacked(Tokenizer):
  """A tokenizer held as a `tokenizers.Tokenizer` (`self._tok`) with its pieces in `self._tokens`:
  WordPiece here, any tokenizer.json in mebert.data.json_tokenizer."""

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

  def id_to_token(self, i: int) -> str:
    return self._tokens[int(i)]


class WordPieceTokenizer(TokenizersBacked):
  """BERT WordPiece through the `tokenizers` library (bert-base-uncased's BertWordPieceTokenizer)."""

  def __init__(self, tok, path: str):
    from tokenizers import models  # pylint: disable=g-import-not-at-top

    self.path = path
    self._tok = tok
    if not isinstance(tok.model, models.WordPiece):
      raise ValueError(f"{path}: only WordPiece tokenizers are supported (this is {type(tok.model).__name__})")
    prefix = tok.model.continuing_subword_prefix
    vocab = tok.get_vocab(with_added_tokens=True)
    self.vocab_size = max(vocab.values()) + 1
    self._set_specials(vocab.get)
    self._tokens = [""] * self.vocab_size
    for t, i in vocab.items():
      self._tokens[i] = t
    self.word_start = np.array([not t.startswith(prefix) for t in self._tokens], bool)
    self.word_start[self.special_ids] = True

  @classmethod
  def from_vocab(cls, text: str, path: str, lowercase: bool = True) -> WordPieceTokenizer:
    from tokenizers import Tokenizer as HfTokenizer, decoders, models, normalizers, pre_tokenizers  # pylint: disable=g-import-not-at-top

    lines = text.split("\n")  # not splitlines(): it also splits at \x1c, \u2028... and would shift ids
    if lines and not lines[-1]:
      lines.pop()
    vocab = {}
    for i, line in enumerate(lines):
      vocab.setdefault(line.rstrip(), i)  # first occurrence wins
    if not vocab:
      raise ValueError(f"{path}: empty vocabulary file")
    tok = HfTokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    # strip_accents=None follows `lowercase`, exactly as bert-base-uncased's tokenizer does.
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens([t for t in SPECIAL_TOKENS if t in vocab])
    return cls(tok, path)


def load_tokenizer(path: str, *, lowercase: bool = True) -> Tokenizer:
  """*.model -> sentencepiece; *.json -> tokenizers' tokenizer.json (WordPiece, or any other model
  with BERT's or RoBERTa's specials: mebert.data.json_tokenizer); else a WordPiece vocab.txt.

  A directory is searched for spm.model, tokenizer.json, vocab.txt (in that order). Paths may be
  gs:// (read through etils.epath). `lowercase` applies to vocab.txt only: a tokenizer.json and a
  sentencepiece model carry their own normalizer.
  """
  from etils import epath  # pylint: disable=g-import-not-at-top

  p = epath.Path(path)
  if p.is_dir():
    found = [p / n for n in (_SPM_NAME, "tokenizer.json", "vocab.txt") if (p / n).exists()]
    if not found:
      raise FileNotFoundError(f"{path}: no {_SPM_NAME}, tokenizer.json or vocab.txt in this directory")
    p = found[0]
  if not p.exists():
    raise FileNotFoundError(f"{path}: tokenizer file not found")
  if p.name.endswith(".model"):
    return SentencePieceTokenizer(p.read_bytes(), str(p))
  if p.name.endswith(".json"):
    from tokenizers import Tokenizer as HfTokenizer  # pylint: disable=g-import-not-at-top

    try:
      tok = HfTokenizer.from_str(p.read_text())
    except Exception as e:  # the Rust error is long and multi-line: keep its first line
      raise ValueError(f"{p}: not a tokenizers tokenizer.json ({str(e).splitlines()[0][:200]})") from None
    # A saved tokenizer.json may pad/truncate every encoding (all-MiniLM-L6-v2's pads to 128);
    # the pipeline does its own truncation and padding.
    tok.no_padding()
    tok.no_truncation()
    from tokenizers import models  # pylint: disable=g-import-not-at-top

    if not isinstance(tok.model, models.WordPiece):  # RoBERTa's, XLM-R's, ModernBERT's
      from mebert.data.json_tokenizer import JsonTokenizer  # pylint: disable=g-import-not-at-top

      return JsonTokenizer(tok, str(p))
    return WordPieceTokenizer(tok, str(p))
  return WordPieceTokenizer.from_vocab(p.read_text(encoding="utf-8"), str(p), lowercase)


def train_sentencepiece(texts: Iterable[str], *, vocab_size: int, output_prefix: str, model_type: str = "unigram",
                        lowercase: bool = False, input_sentence_size: int = 2_000_000, seed: int = 0) -> str:
  """Trains a sentencepiece model on texts (one sentence/line each); returns f"{output_prefix}.model".

  Ids 0-4 are [PAD] [UNK] [CLS] [SEP] [MASK]; no BOS/EOS. Deterministic for the same input: one
  trainer thread and a fixed sampling seed. At most `input_sentence_size` sentences are used
  (sampled). `hard_vocab_limit=False`, so a small corpus gives a smaller vocabulary rather than an
  error: read `vocab_size` from the loaded tokenizer. `lowercase` case-folds in the normalizer
  (nmt_nfkc_cf), so it applies at encode time too.
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top

  lines = (s for t in texts for s in (x.strip() for x in t.split("\n")) if s)
  model = io.BytesIO()
  spm.set_random_generator_seed(seed)
  spm.SentencePieceTrainer.train(
      sentence_iterator=lines, model_writer=model, vocab_size=vocab_size, model_type=model_type,
      pad_id=0, pad_piece="[PAD]", unk_id=1, unk_piece="[UNK]", bos_id=-1, eos_id=-1,
      control_symbols=list(SPECIAL_TOKENS[2:]), byte_fallback=False, hard_vocab_limit=False,
      input_sentence_size=input_sentence_size, shuffle_input_sentence=True, max_sentence_length=16384,
      normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc", num_threads=1, minloglevel=2)
  out = epath.Path(f"{output_prefix}.model")
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.parent / f"{out.name}.tmp{os.getpid()}"
  tmp.write_bytes(model.getvalue())
  tmp.rename(out)  # a reader never sees half a model
  tok = SentencePieceTokenizer(model.getvalue(), str(out))
  epath.Path(f"{output_prefix}.vocab").write_text("".join(f"{tok.id_to_token(i)}\n" for i in range(tok.vocab_size)))
  logging.info("trained sentencepiece %s: %d pieces", out, tok.vocab_size)
  return str(out)


def trained_vocab_path(workdir: str) -> str:
  """Where ensure_tokenizer keeps the vocabulary it trains for a workdir (recorded as data.vocab
  in the workdir's saved config, so exports and fine-tuning find it)."""
  from etils import epath  # pylint: disable=g-import-not-at-top

  return str(epath.Path(workdir) / "vocab" / _SPM_NAME)


def ensure_tokenizer(data_config, workdir: str) -> Tokenizer:
  """data_config.vocab if set; else the sentencepiece model in {workdir}/vocab/, trained if absent.

  Training uses the train documents only (the held-out eval split is excluded). Process 0 trains,
  every process then meets at a barrier and loads the file, so all hosts share one vocabulary.
  """
  from etils import epath  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  lowercase = bool(data_config.get("lowercase", True))
  if data_config.get("vocab", ""):
    return load_tokenizer(data_config.vocab, lowercase=lowercase)
  model_path = epath.Path(trained_vocab_path(workdir))
  if jax.process_index() == 0 and not model_path.exists():
    from mebert.data import corpora  # pylint: disable=g-import-not-at-top

    corpus, ids = corpora.corpus_split(data_config, "train")
    if not corpus.in_memory:  # a sample of a huge corpus: ~100k documents spread evenly over it
      ids = ids[:: max(1, len(ids) // 100_000)]
    train_sentencepiece((corpus.documents[int(i)] for i in ids), vocab_size=int(data_config.vocab_size),
                        output_prefix=str(model_path)[: -len(".model")], lowercase=lowercase,
                        model_type=data_config.get("spm_model_type", "unigram"))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    multihost_utils.sync_global_devices("mebert.data.ensure_tokenizer")
  tok = load_tokenizer(str(model_path))
  if tok.vocab_size != int(data_config.vocab_size):
    # Either the corpus was too small for vocab_size (hard_vocab_limit=False), or the model was
    # trained by an earlier run with another vocab_size: this file wins; delete it to retrain.
    logging.warning("%s has %d tokens, data.vocab_size is %d; using the file", model_path, tok.vocab_size,
                    int(data_config.vocab_size))
  return tok


def main(argv: Sequence[str] | None = None) -> None:
  from mebert.data import corpora  # pylint: disable=g-import-not-at-top

  ap = argparse.ArgumentParser(description="Train a sentencepiece model with BERT's special tokens.")
  ap.add_argument("--corpus", default="builtin", help="corpus spec: builtin, paths/globs, tfds:NAME")
  ap.add_argument("--vocab_size", type=int, default=8192)
  ap.add_argument("--output", required=True, help="output prefix: writes PREFIX.model and PREFIX.vocab")
  ap.add_argument("--model_type", default="unigram", choices=("unigram", "bpe", "char", "word"))
  ap.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=True)
  ap.add_argument("--one_doc_per_file", action="store_true")
  ap.add_argument("--tfds_data_dir", default=None)
  args = ap.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  corpus = corpora.load_corpus(args.corpus, tfds_data_dir=args.tfds_data_dir, one_doc_per_file=args.one_doc_per_file)
  docs = corpus.documents
  if not corpus.in_memory:
    docs = docs[:: max(1, len(docs) // 100_000)]
  path = train_sentencepiece(docs, vocab_size=args.vocab_size, output_prefix=args.output,
                             model_type=args.model_type, lowercase=args.lowercase)
  tok = load_tokenizer(path)
  sample = "The quick brown fox jumps over the lazy dog."
  print(json.dumps({"model": path, "vocab_size": tok.vocab_size,
                    "sample": [tok.id_to_token(i) for i in tok.encode(sample)]}))


if __name__ == "__main__":
  main()
