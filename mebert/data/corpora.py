"""Pretraining corpora: a spec string -> documents, with bad input counted instead of fatal.

Spec grammar (comma-separated parts are concatenated in order):
  "builtin"                              Python's own docs (see builtin_corpus.py), the default
  "PATH" | "GLOB" | "DIR"                local text files (a DIR means every file under it)
  "tfds:NAME[/CONFIG][:VERSION][@SPLIT]" a prepared TFDS dataset in array_record format, read
                                         without TensorFlow; SPLIT defaults to "train"

A document is a str of non-empty lines. Local files are split into documents at blank lines (BERT's
input format: one sentence or paragraph per line, blank line between documents), with
`one_doc_per_file` one document per file, or with `doc_separator` (a regex) at each line it matches
in full, which is dropped: blank lines then separate paragraphs within a document. WikiText's
articles start with a " = Title = " line: doc_separator=r" ?= [^=].* = ?" reads them as documents
(its " = = Section = = " lines stay in the text; r" ?(= )+[^=].*( =)+ ?" makes each section one).
Sentences are lines further split by a regex, with pysbd's rules deciding the lines where a
boundary may follow an abbreviation (`split_sentences`).

Local and builtin corpora are held in memory as list[str]; a TFDS part makes the corpus lazy: the
documents become a random-access source read on demand (Wikipedia does not fit in RAM).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import logging
import os
import re
from collections.abc import Sequence

import numpy as np

from mebert.data import builtin_corpus

# Lines longer than this are cut (at whitespace when possible): sentencepiece's trainer silently
# drops "sentences" over 4192 bytes, and one 1 MB line (minified data, a table) is one useless chunk.
DEFAULT_MAX_LINE_CHARS = 4000
_BLANK_LINE = re.compile(r"\n[ \t\f\v]*\n")
# Sentence end: . ! or ? (optionally closed by a quote/bracket), whitespace, then what can start a
# sentence. Alone it splits "Mr. Smith": _MAYBE_ABBREVIATION sends such lines to pysbd.
_SENTENCE_END = re.compile(r"(?<=[.!?])(?<!\b[A-Z]\.)([\"')\]]?)\s+(?=[\"'(\[]?[A-Z0-9])")


@dataclasses.dataclass(eq=False)  # hashed by identity: caches downstream key on the loaded object
class Corpus:
  spec: str
  documents: Sequence[str]  # list[str] when in_memory, else a lazy random-access source
  stats: dict[str, int]
  in_memory: bool


# A proposed boundary right after something that may be an abbreviation ("Mr.", "Dr.", "St.",
# "e.g.", "p.m.", "etc.", an initial): pysbd's rules decide that line.
_MAYBE_ABBREVIATION = re.compile(
    r"(?:\b[A-Z][a-z]{0,3}|\b\w(?:\.\w)+|\b(?:etc|vs|approx|incl|cf|al|ca|no))\.[\"')\]]?$")


@functools.lru_cache(maxsize=1)
def _segmenter():
  """pysbd's English segmenter (a kept rule set: abbreviations, initials, numbers, quotes), or
  None where pysbd is not installed (then the regex alone splits)."""
  try:
    import pysbd  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return pysbd.Segmenter(language="en", clean=False)


def split_sentences(document: str) -> list[str]:
  """Lines of a document, each further split into sentences.

  A regex proposes boundaries after sentence-final punctuation; where one follows a possible
  abbreviation (about 1 line in 25 of Wikipedia text), pysbd splits the line instead ("Mr. Smith
  left." is one sentence). pysbd alone would be right on the rest too, but it splits about 50 KB
  of text a second, against the regex's 5 MB: too slow for a pretraining corpus."""
  out, segmenter = [], _segmenter()
  for line in document.split("\n"):
    line = line.strip()
    if line:
      parts = _SENTENCE_END.split(line)  # the capture group keeps closing quotes: rejoin them
      parts = [s for s in (a + b for a, b in zip(parts[::2], parts[1::2] + [""])) if s.strip()]
      if segmenter is not None and len(parts) > 1 and any(
          _MAYBE_ABBREVIATION.search(p) for p in parts[:-1]):
        parts = [s.strip() for s in segmenter.segment(line) if s.strip()]
      out += parts
  return out


def _add(stats: dict[str, int], key: str, n: int = 1) -> None:
  stats[key] = stats.get(key, 0) + n


def _split_long_line(line: str, limit: int) -> list[str]:
  pieces = []
  while len(line) > limit:
    cut = line.rfind(" ", limit // 2, limit)
    cut = limit if cut < 0 else cut
    pieces.append(line[:cut])
    line = line[cut:].lstrip()
  return pieces + [line]


def clean_document(text: str, stats: dict[str, int], max_line_chars: int = DEFAULT_MAX_LINE_CHARS) -> str:
  """Strip lines, drop blank ones, cut very long ones (counted in stats["long_lines_split"])."""
  lines = []
  for line in text.split("\n"):
    line = line.strip()
    if len(line) > max_line_chars:
      _add(stats, "long_lines_split")
      lines += _split_long_line(line, max_line_chars)
    elif line:
      lines.append(line)
  return "\n".join(lines)


def decode_text(raw: bytes, path: str, stats: dict[str, int]) -> str:
  """bytes -> str: BOMs, UTF-8, Latin-1 fallback, CRLF; refuses binary files (NUL bytes)."""
  if raw.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 with BOM (Windows "Unicode" text)
    _add(stats, "utf16_files")
    text = raw.decode("utf-16", errors="replace")
  elif b"\x00" in raw[:65536]:
    raise ValueError(f"{path}: binary file (NUL bytes), not text; remove it from the corpus spec")
  else:
    if raw.startswith(b"\xef\xbb\xbf"):
      _add(stats, "bom_files")
      raw = raw[3:]
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError:
      text = raw.decode("utf-8", errors="replace")
      bad = text.count("\ufffd")
      good = sum(1 for c in text if c > "\x7f") - bad
      if good < bad:  # mostly invalid UTF-8: a legacy 8-bit file; Latin-1 decodes every byte
        _add(stats, "latin1_files")
        text = raw.decode("latin-1")
      else:  # UTF-8 with a few corrupt bytes: keep it, count the replacements
        _add(stats, "utf8_replaced_chars", bad)
  if "\r" in text:
    _add(stats, "crlf_files")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
  return text


def doc_separator_regex(pattern: str) -> re.Pattern | None:
  """data.doc_separator compiled (None when empty); a bad regex is one clear error."""
  if not pattern:
    return None
  try:
    return re.compile(pattern)
  except re.error as e:
    raise ValueError(f"data.doc_separator={pattern!r} is not a regular expression: {e}") from None


def split_at_separator(text: str, separator: re.Pattern) -> list[str]:
  """Documents of `text`: a new one at each line the separator matches in full (line dropped)."""
  parts, current = [], []
  for line in text.split("\n"):
    if separator.fullmatch(line):
      parts.append("\n".join(current))
      current = []
    else:
      current.append(line)
  parts.append("\n".join(current))
  return parts


def read_documents(path: str, stats: dict[str, int], *, one_doc_per_file: bool = False,
                   max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
                   doc_separator: re.Pattern | None = None) -> list[str]:
  """The cleaned, non-empty documents of one text file (empty ones are counted and dropped)."""
  with open(path, "rb") as f:
    raw = f.read()
  _add(stats, "files")
  _add(stats, "bytes", len(raw))
  text = decode_text(raw, path, stats)
  if one_doc_per_file:
    parts = [text]
  elif doc_separator is not None:
    parts = split_at_separator(text, doc_separator)
  else:
    parts = _BLANK_LINE.split(text)
  docs = [clean_document(p, stats, max_line_chars) for p in parts]
  _add(stats, "empty_documents", sum(1 for d in docs if not d))
  if not any(docs):
    _add(stats, "empty_files")
  return [d for d in docs if d]


def expand_paths(pattern: str) -> list[str]:
  """A file, a directory (all files under it) or a glob -> sorted file list; nothing -> error."""
  if os.path.isdir(pattern):
    paths = [os.path.join(dp, f) for dp, dns, fns in os.walk(pattern) for f in fns if not f.startswith(".")]
  elif os.path.isfile(pattern):
    paths = [pattern]
  else:
    paths = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
  if not paths:
    raise FileNotFoundError(f"corpus: no file matches {pattern!r}")
  return sorted(paths)


class TfdsDocuments(Sequence):
  """The "text" feature of a TFDS split as a lazy random-access sequence of str.

  Pickles as (name, split, data_dir) and reopens the source on first use, so grain worker
  processes each get their own array_record readers.
  """

  def __init__(self, name: str, split: str = "train", data_dir: str | None = None,
               max_line_chars: int = DEFAULT_MAX_LINE_CHARS):
    self.name, self.split, self.data_dir, self.max_line_chars = name, split, data_dir, max_line_chars
    self._source = None
    self._len = len(self._open())

  def _open(self):
    if self._source is None:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      from mebert.data import tfds_corpus  # noqa: F401  (registers the local builder)

      try:
        src = tfds.data_source(self.name, split=self.split, data_dir=self.data_dir, download=False)
      except Exception as e:  # TFDS's message lists every registered dataset: keep its first line
        where = self.data_dir or "the default TFDS data dir"
        raise FileNotFoundError(f"tfds:{self.name}@{self.split}: not readable from {where}; prepare it as "
                                f"array_record first ({str(e).splitlines()[0][:200]})") from None
      features = src.dataset_info.features
      if "text" not in features:
        raise ValueError(f"tfds:{self.name}: has no 'text' feature (features: {sorted(features.keys())})")
      self._source = src
    return self._source

  def __getstate__(self):
    return {**self.__dict__, "_source": None}

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    text = self._open()[int(i)]["text"]  # TFDS Text features decode to bytes
    text = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
    return clean_document(text.replace("\r\n", "\n"), {}, self.max_line_chars)


class ConcatDocuments(Sequence):
  """Several document sequences seen as one (random access through cumulative offsets)."""

  def __init__(self, parts: list[Sequence[str]]):
    self.parts = parts
    self.offsets = np.cumsum([0] + [len(p) for p in parts])

  def __len__(self) -> int:
    return int(self.offsets[-1])

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    k = int(np.searchsorted(self.offsets, i, side="right")) - 1
    return self.parts[k][int(i) - int(self.offsets[k])]


def _parse_tfds(part: str) -> tuple[str, str]:
  name, _, split = part[len("tfds:"):].partition("@")
  if not name:
    raise ValueError(f"corpus: empty TFDS name in {part!r} (expected tfds:NAME[/CONFIG][:VERSION][@SPLIT])")
  return name, split or "train"


@functools.lru_cache(maxsize=4)
def load_corpus(spec: str = "builtin", *, tfds_data_dir: str | None = None, one_doc_per_file: bool = False,
                max_line_chars: int = DEFAULT_MAX_LINE_CHARS, doc_separator: str = "") -> Corpus:
  """Loads a corpus spec (see module docstring). Cached: train, eval and the tokenizer trainer share it.

  Raises FileNotFoundError for a path/glob that matches nothing, ValueError for a binary file or a
  corpus with no text; both name the path. Treat the returned Corpus as read-only.
  """
  stats: dict[str, int] = {}
  parts: list[Sequence[str]] = []
  separator = doc_separator_regex(doc_separator)
  for part in (p.strip() for p in spec.split(",")):
    if not part:
      continue
    if part == "builtin":
      docs = builtin_documents_cleaned(stats, max_line_chars)
    elif part.startswith("tfds:"):
      name, split = _parse_tfds(part)
      docs = TfdsDocuments(name, split, tfds_data_dir or None, max_line_chars)
      _add(stats, "tfds_documents", len(docs))
    else:
      docs = []
      for path in expand_paths(os.path.expanduser(part)):
        docs += read_documents(path, stats, one_doc_per_file=one_doc_per_file,
                               max_line_chars=max_line_chars, doc_separator=separator)
    if not len(docs):
      raise ValueError(f"corpus: {part!r} has no text (empty files or only blank lines)")
    parts.append(docs)
  if not parts:
    raise ValueError(f"corpus: empty spec {spec!r}")
  in_memory = all(isinstance(p, list) for p in parts)
  documents = [d for p in parts for d in p] if in_memory else ConcatDocuments(parts)
  stats["documents"] = len(documents)
  if in_memory:
    stats["chars"] = sum(len(d) for d in documents)
  logging.info("corpus %r: %s", spec, stats)
  return Corpus(spec=spec, documents=documents, stats=stats, in_memory=in_memory)


def builtin_documents_cleaned(stats: dict[str, int], max_line_chars: int = DEFAULT_MAX_LINE_CHARS) -> list[str]:
  """The builtin corpus cleaned like any other (blank lines dropped, long lines cut)."""
  docs = [clean_document(d, stats, max_line_chars) for d in builtin_corpus.builtin_documents(stats)]
  _add(stats, "empty_documents", sum(1 for d in docs if not d))
  return [d for d in docs if d]


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """A stateless 64-bit mixer (SplitMix64's finalizer): index -> well spread uint64."""
  x = (x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def heldout_split(corpus: Corpus, eval_fraction: float, min_eval_docs: int = 8) -> tuple[np.ndarray, np.ndarray]:
  """(train_doc_ids, eval_doc_ids): a deterministic document-level split; never a shared document.

  In-memory corpora hash each document's text (so identical documents land on the same side, and
  adding files does not reshuffle the others); lazy corpora hash the document index (reading all of
  Wikipedia to hash it is not an option). A document is held out when its hash, as a fraction of
  2**64, is below `eval_fraction`; the `min_eval_docs` lowest hashes are held out too, but never
  more than a quarter of the corpus.
  """
  n = len(corpus.documents)
  with np.errstate(over="ignore"):
    if corpus.in_memory:
      h = np.array([int.from_bytes(hashlib.blake2b(d.encode("utf-8"), digest_size=8).digest(), "little")
                    for d in corpus.documents], dtype=np.uint64)
    else:
      h = _splitmix64(np.arange(n, dtype=np.uint64))
  u = h.astype(np.float64) / 2.0**64
  is_eval = u < eval_fraction
  k = min(min_eval_docs, n // 4)
  if is_eval.sum() < k:
    is_eval[np.argsort(u, kind="stable")[:k]] = True
  return np.flatnonzero(~is_eval), np.flatnonzero(is_eval)


def corpus_split(data_config, split: str) -> tuple[Corpus, np.ndarray]:
  """(corpus, document ids) of the "train" or "eval" split that `data_config` describes.

  With `eval_corpus` set, eval reads that corpus whole and train keeps all of `corpus`; otherwise
  both come from `corpus` through `heldout_split`.
  """
  if split not in ("train", "eval"):
    raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
  kw = dict(tfds_data_dir=data_config.get("tfds_data_dir", "") or None,
            one_doc_per_file=bool(data_config.get("one_doc_per_file", False)),
            max_line_chars=int(data_config.get("max_line_chars", DEFAULT_MAX_LINE_CHARS)),
            doc_separator=str(data_config.get("doc_separator", "")))
  eval_spec = data_config.get("eval_corpus", "")
  corpus = load_corpus(eval_spec if split == "eval" and eval_spec else data_config.get("corpus", "builtin"), **kw)
  if eval_spec:
    return corpus, np.arange(len(corpus.documents))
  train_ids, eval_ids = heldout_split(corpus, float(data_config.get("eval_fraction", 0.02)),
                                      int(data_config.get("min_eval_docs", 8)))
  return corpus, (train_ids if split == "train" else eval_ids)
