"""Documents as sentences of token ids, and the static index of example starts ("chunks").

Two stores, one interface (`num_docs`, `doc(d)`, `num_examples`, `locate(i, rng)`):

* `EagerDocStore` (builtin and local corpora): the whole split is tokenized once, at build time,
  into one flat token array plus sentence and document offsets (uint16 tokens when the vocabulary
  allows: Gutenberg's 10 MB is ~3M tokens, 6 MB). Example starts are chunks found by greedily
  filling max_num_tokens with whole sentences, as create_pretraining_data.py does with its target
  length, so one epoch is roughly one example per max_seq_len tokens of text.
* `LazyDocStore` (TFDS corpora, too big to tokenize up front): documents are tokenized when an
  example needs them. The epoch has `k` example slots per document, `k` being the mean chunk count
  of a sample of documents; slot j of a document with n chunks picks a chunk in
  [j*n/k, (j+1)*n/k) at random (with n < k, chunk j mod n), so long documents are still covered
  over the epochs.

Sentences longer than max_num_tokens are cut into max_num_tokens pieces, and special ids found in
text (WordPiece maps a literal "[SEP]" to the id) become [UNK], so only the pipeline places specials.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import numpy as np

from mebert.data import corpora

_ENCODE_SLAB = 20_000  # sentences per encode_batch call: bounds the Python-list peak memory


class DocView(Sequence):
  """The sentences of one eager document as zero-copy slices of the flat token array."""

  def __init__(self, tokens: np.ndarray, offsets: np.ndarray, lo: int, hi: int):
    self._tokens, self._offsets, self._lo, self._n = tokens, offsets, lo, hi - lo

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, j):
    o = self._lo + j
    return self._tokens[self._offsets[o]:self._offsets[o + 1]]


def chunk_starts(lengths: Sequence[int], max_num_tokens: int) -> list[int]:
  """Greedy chunking: a chunk ends at the first sentence where its length reaches max_num_tokens."""
  starts, acc, start = [], 0, 0
  for j, n in enumerate(lengths):
    acc += n
    if acc >= max_num_tokens:
      starts.append(start)
      start, acc = j + 1, 0
  if start < len(lengths):
    starts.append(start)
  return starts


def _token_dtype(vocab_size: int):
  return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def _sanitize(ids: np.ndarray, tokenizer) -> np.ndarray:
  bad = np.isin(ids, [tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id])
  if bad.any():
    ids = ids.copy()
    ids[bad] = tokenizer.unk_id
  return ids


def _cut(ids: np.ndarray, max_num_tokens: int) -> list[np.ndarray]:
  return [ids[i:i + max_num_tokens] for i in range(0, len(ids), max_num_tokens)]


class EagerDocStore:
  """A whole split tokenized at build time (see module docstring)."""

  def __init__(self, documents: Sequence[str], doc_ids: np.ndarray, tokenizer, max_num_tokens: int):
    dtype = _token_dtype(tokenizer.vocab_size)
    sents_per_doc, sentences = [], []
    for d in doc_ids:
      s = corpora.split_sentences(documents[int(d)])
      sents_per_doc.append(len(s))
      sentences += s
    lengths, slabs = [], []
    for i in range(0, len(sentences), _ENCODE_SLAB):
      enc = tokenizer.encode_batch(sentences[i:i + _ENCODE_SLAB])
      lengths += [len(e) for e in enc]
      slabs.append(np.fromiter(itertools.chain.from_iterable(enc), dtype, sum(len(e) for e in enc)))
    self.tokens = _sanitize(np.concatenate(slabs) if slabs else np.zeros(0, dtype), tokenizer)
    tok_off = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    doc_tok_off = tok_off[np.concatenate([[0], np.cumsum(sents_per_doc, dtype=np.int64)])]
    # Sentence boundaries: each sentence start, plus a cut every max_num_tokens inside long ones;
    # np.unique also drops empty sentences (two equal offsets).
    long = np.flatnonzero(np.diff(tok_off) > max_num_tokens)
    cuts = [np.arange(tok_off[j] + max_num_tokens, tok_off[j + 1], max_num_tokens) for j in long]
    self.sent_off = np.unique(np.concatenate([tok_off, *cuts]).astype(np.int64))
    doc_sent = np.searchsorted(self.sent_off, doc_tok_off)
    keep = np.flatnonzero(doc_sent[1:] > doc_sent[:-1])  # documents with at least one token
    self.doc_lo, self.doc_hi = doc_sent[:-1][keep], doc_sent[1:][keep]
    sent_len = np.diff(self.sent_off)
    chunk_doc, chunk_start = [], []
    for d, (lo, hi) in enumerate(zip(self.doc_lo, self.doc_hi)):
      starts = chunk_starts(sent_len[lo:hi].tolist(), max_num_tokens)
      chunk_doc += [d] * len(starts)
      chunk_start += starts
    self.chunk_doc = np.asarray(chunk_doc, np.int32)
    self.chunk_start = np.asarray(chunk_start, np.int32)
    self.stats = {"documents": len(keep), "empty_documents": len(doc_ids) - len(keep),
                  "sentences": len(sent_len), "long_sentences_cut": len(long), "tokens": len(self.tokens),
                  "unk_tokens": int(np.sum(self.tokens == tokenizer.unk_id)), "chunks": len(self.chunk_doc)}
    if not len(keep):
      raise ValueError("corpus: no document has any token after tokenization")

  @property
  def num_docs(self) -> int:
    return len(self.doc_lo)

  @property
  def num_examples(self) -> int:
    return len(self.chunk_doc)

  def doc(self, d: int) -> DocView:
    return DocView(self.tokens, self.sent_off, int(self.doc_lo[d]), int(self.doc_hi[d]))

  def locate(self, i: int, rng: np.random.Generator) -> tuple[int, Sequence[np.ndarray], int]:
    del rng  # the chunk index is static
    d = int(self.chunk_doc[i])
    return d, self.doc(d), int(self.chunk_start[i])


class LazyDocStore:
  """A split tokenized on demand, for corpora too big to hold (see module docstring)."""

  def __init__(self, documents: Sequence[str], doc_ids: np.ndarray, tokenizer, max_num_tokens: int,
               sample_docs: int = 64):
    # uint32 ids: the store is pickled to every grain worker, and Wikipedia has ~6M documents
    ids = np.asarray(doc_ids)
    self.doc_ids = ids.astype(np.uint32) if len(ids) and ids.max() < 2**32 else ids
    self.documents, self.tokenizer = documents, tokenizer
    self.max_num_tokens = max_num_tokens
    if not len(self.doc_ids):
      raise ValueError("corpus: the split has no documents")
    sample = self.doc_ids[:: max(1, len(self.doc_ids) // sample_docs)][:sample_docs]
    counts = [len(chunk_starts([len(s) for s in self._sentences_of(int(i))], max_num_tokens)) for i in sample]
    self.slots = max(1, round(float(np.mean(counts))))
    self.stats = {"documents": len(self.doc_ids), "slots_per_document": self.slots,
                  "chunks": len(self.doc_ids) * self.slots}
    logging.info("lazy corpus: %d documents x %d example slots (mean chunks of %d sampled documents)",
                 len(self.doc_ids), self.slots, len(sample))

  def _sentences_of(self, doc_index: int) -> list[np.ndarray]:
    sents = corpora.split_sentences(self.documents[doc_index])
    out = []
    for ids in self.tokenizer.encode_batch(sents) if sents else []:
      if ids:
        out += _cut(_sanitize(np.asarray(ids, np.int32), self.tokenizer), self.max_num_tokens)
    return out

  @property
  def num_docs(self) -> int:
    return len(self.doc_ids)

  @property
  def num_examples(self) -> int:
    return len(self.doc_ids) * self.slots

  def doc(self, d: int) -> list[np.ndarray]:
    return self._sentences_of(int(self.doc_ids[d]))

  def locate(self, i: int, rng: np.random.Generator) -> tuple[int, Sequence[np.ndarray], int]:
    d, slot = divmod(int(i), self.slots)
    for _ in range(min(100, self.num_docs)):  # an empty document yields its slot to the next one
      sents = self.doc(d)
      if sents:
        break
      d = (d + 1) % self.num_docs
    else:
      raise ValueError(f"corpus: 100 consecutive empty documents from document {self.doc_ids[i // self.slots]}")
    starts = chunk_starts([len(s) for s in sents], self.max_num_tokens)
    n = len(starts)
    if n >= self.slots:
      c = int(rng.integers(slot * n // self.slots, (slot + 1) * n // self.slots))
    else:
      c = slot % n
    return d, sents, starts[c]


def build_store(documents: Sequence[str], doc_ids: np.ndarray, tokenizer, max_num_tokens: int, in_memory: bool):
  store = (EagerDocStore if in_memory else LazyDocStore)(documents, doc_ids, tokenizer, max_num_tokens)
  logging.info("doc store: %s", store.stats)
  return store
