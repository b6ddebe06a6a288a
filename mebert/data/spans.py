"""RoBERTa's FULL-SENTENCES inputs (data.cross_document): spans of whole sentences, sampled
contiguously from the concatenated documents of a split, that may cross document boundaries.

Liu et al. 2019, section 4.2: "Each input is packed with full sentences sampled contiguously from
one or more documents, such that the total length is at most 512 tokens. Inputs may cross document
boundaries. When we reach the end of one document, we begin sampling sentences from the next
document and add an extra separator token between documents."

The stream is the split's documents in corpus order (a held-out split's documents are not in the
train stream at all, so no span crosses into one), its units the doc store's sentences (those over
max_num_tokens already cut into max_num_tokens pieces, so every unit fits a row). A span is greedy:
it takes the next sentences while they fit in max_num_tokens (= seq_len - 2, room for [CLS] and
the final [SEP]), counting one [SEP] before each document's first sentence inside the span; a
document boundary at a span's edge costs nothing (the row's own [CLS]/[SEP] frame it). Spans are
a static index, so example i is a pure function of (seed, epoch, i) like every other example; only
the masking changes between epochs (dynamic masking), as in fairseq's static token blocks.

Coverage per epoch:
* `EagerSpans` (builtin and local corpora, tokenized up front): the spans partition the whole
  stream, so every token of the split is in exactly one span, and one epoch is every span once.
* `LazySpans` (TFDS corpora, tokenized on demand): a global partition would need every document
  tokenized, so the stream is cut into groups of `group_docs` consecutive documents (enough for
  about `SPANS_PER_GROUP` spans on average) and partitioned per group; spans cross document
  boundaries but not group boundaries. The epoch has `slots` examples per group, each picking one
  span from its stratum of the group's partition, exactly as mebert.data.docstore.LazyDocStore
  does with a document's chunks: every span once per epoch when a group has `slots` spans, about
  once otherwise.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from mebert.data import docstore

SPANS_PER_GROUP = 4  # LazySpans: more is fewer short group tails, but more tokenizing per example


def span_starts(lengths: np.ndarray, doc_start: np.ndarray, max_num_tokens: int) -> np.ndarray:
  """Greedy partition of a sentence stream into spans of at most max_num_tokens tokens.

  lengths[j] is sentence j's token count (each <= max_num_tokens); doc_start[j] is True where a
  document begins (a [SEP] goes before it unless it opens a span). Returns the start sentence of
  each span, then len(lengths): span k is sentences [out[k], out[k+1]).
  """
  lengths = np.asarray(lengths, np.int64)
  sep = np.asarray(doc_start, bool).astype(np.int64)
  if len(lengths) and lengths.max() > max_num_tokens:
    raise ValueError(f"a sentence of {lengths.max()} tokens exceeds the span of {max_num_tokens}")
  cost = np.concatenate([[0], np.cumsum(lengths + sep)])  # cost[j]: sentences < j, each separator
  starts, s, n = [], 0, len(lengths)
  while s < n:  # one binary search per span, not a Python step per sentence
    starts.append(s)
    # The separator before sentence s opens nothing when s opens the span: it is not paid.
    s = int(np.searchsorted(cost, cost[s] + max_num_tokens + sep[s], side="right")) - 1
  return np.asarray(starts + [n], np.int64)


def _with_separators(parts: list[np.ndarray], doc_start: np.ndarray, sep_id: int) -> np.ndarray:
  """The sentences joined, with sep_id before each document start but a span-opening one."""
  pieces = []
  for j, part in enumerate(parts):
    if j and doc_start[j]:
      pieces.append(np.array([sep_id], np.int32))
    pieces.append(np.asarray(part, np.int32))
  return np.concatenate(pieces) if pieces else np.zeros(0, np.int32)


class EagerSpans:
  """The span partition of an EagerDocStore's whole split (see the module docstring)."""

  def __init__(self, store, sep_id: int, max_num_tokens: int):
    self.store, self.sep_id = store, int(sep_id)
    lengths = np.diff(store.sent_off)
    self.doc_start = np.zeros(len(lengths), bool)
    self.doc_start[store.doc_lo] = True
    self.starts = span_starts(lengths, self.doc_start, max_num_tokens)
    opening = self.doc_start[self.starts[:-1]]  # spans that open on a document's first sentence
    inside = np.add.reduceat(self.doc_start.astype(np.int64), self.starts[:-1]) - opening
    self.stats = {"spans": self.num_examples, "documents": store.num_docs,
                  "spans_crossing_documents": int(np.sum(inside > 0)),
                  "mean_span_tokens": round((len(store.tokens) + int(inside.sum()))
                                            / max(self.num_examples, 1), 1)}

  @property
  def num_examples(self) -> int:
    return len(self.starts) - 1

  def span(self, i: int, rng: np.random.Generator) -> np.ndarray:
    """Span i's token ids (int32), with sep_id between documents."""
    del rng  # the partition is static
    s, e = int(self.starts[i]), int(self.starts[i + 1])
    off = self.store.sent_off
    tokens = self.store.tokens[off[s]:off[e]].astype(np.int32)
    inside = np.flatnonzero(self.doc_start[s + 1:e]) + s + 1  # documents that begin mid-span
    return np.insert(tokens, off[inside] - off[s], self.sep_id)


class LazySpans:
  """Span partitions of groups of consecutive documents of a LazyDocStore (module docstring)."""

  def __init__(self, store, sep_id: int, max_num_tokens: int, sample_groups: int = 16):
    self.store, self.sep_id, self.max_num_tokens = store, int(sep_id), int(max_num_tokens)
    n = store.num_docs
    sample = range(0, n, max(1, n // 64))[:64]
    doc_tokens = np.mean([sum(len(s) for s in store.doc(d)) for d in sample])
    self.group_docs = max(1, math.ceil(SPANS_PER_GROUP * max_num_tokens / max(doc_tokens, 1.0)))
    self.num_groups = math.ceil(n / self.group_docs)
    groups = range(0, self.num_groups, max(1, self.num_groups // sample_groups))[:sample_groups]
    counts = [len(self._group(g)[2]) - 1 for g in groups]
    self.slots = max(1, round(float(np.mean(counts))))
    self.stats = {"documents": n, "documents_per_group": self.group_docs,
                  "groups": self.num_groups, "slots_per_group": self.slots,
                  "spans": self.num_groups * self.slots}
    logging.info("lazy full-sentence spans: %d groups of %d documents x %d slots (mean tokens of "
                 "%d sampled documents: %.0f)", self.num_groups, self.group_docs, self.slots,
                 len(sample), doc_tokens)

  def _group(self, g: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """(sentences, doc_start flags, span starts) of group g."""
    sents, flags = [], []
    for d in range(g * self.group_docs, min((g + 1) * self.group_docs, self.store.num_docs)):
      doc = self.store.doc(d)
      sents += doc
      flags += [j == 0 for j in range(len(doc))]
    doc_start = np.asarray(flags, bool)
    return sents, doc_start, span_starts([len(s) for s in sents], doc_start, self.max_num_tokens)

  @property
  def num_examples(self) -> int:
    return self.num_groups * self.slots

  def span(self, i: int, rng: np.random.Generator) -> np.ndarray:
    """Example slot i's span (int32 ids, sep_id between documents); draws from rng."""
    g, slot = divmod(int(i), self.slots)
    for _ in range(min(100, self.num_groups)):  # an empty group yields its slot to the next one
      sents, doc_start, starts = self._group(g)
      if sents:
        break
      g = (g + 1) % self.num_groups
    else:
      raise ValueError(f"corpus: 100 consecutive empty document groups from document "
                       f"{self.store.doc_ids[(i // self.slots) * self.group_docs]}")
    n = len(starts) - 1
    if n >= self.slots:
      c = int(rng.integers(slot * n // self.slots, (slot + 1) * n // self.slots))
    else:
      c = slot % n
    s, e = int(starts[c]), int(starts[c + 1])
    return _with_separators(sents[s:e], doc_start[s:e], self.sep_id)


def build_spans(store, sep_id: int, max_num_tokens: int):
  """The FULL-SENTENCES span index of a doc store (eager or lazy)."""
  kind = LazySpans if isinstance(store, docstore.LazyDocStore) else EagerSpans
  spans = kind(store, sep_id, max_num_tokens)
  logging.info("full-sentence spans: %s", spans.stats)
  return spans
