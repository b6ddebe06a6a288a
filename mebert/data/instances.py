"""One pretraining example as a pure function of (seed, epoch, index): pairs, NSP/SOP, masking.

Two input formats: sentence pairs (or one segment) within one document, from the doc store's
chunks (below; with next_sentence="none" and no short rows that is RoBERTa's DOC-SENTENCES), and,
with cross_document, RoBERTa's FULL-SENTENCES: spans that run on across documents with a [SEP]
between them (mebert.data.spans).

Follows google-research/bert create_pretraining_data.py (create_instances_from_document,
truncate_seq_pair, create_masked_lm_predictions), made on the fly from a static chunk index
(docstore.py) instead of dupe_factor offline copies. Deliberate differences, all small:
  * the number of masked tokens is masked_lm_prob x the non-special tokens (the original counts
    [CLS]/[SEP] too), still capped by max_predictions_per_seq;
  * a random replacement token is drawn from the non-special vocabulary (the original may draw
    [MASK] or [CLS]);
  * a chunk of a single sentence is split at a random token boundary so that it can still be an
    IsNext / in-order pair (the original always makes it a random-next example, which skews the
    NSP labels on corpora with long lines);
  * truncation draws the number of front/back removals at once (same distribution as the
    original's token-by-token coin flips, O(1) instead of O(excess));
  * the shares of the chosen tokens that become [MASK] / a random token (the rest stay) are
    options, BERT's 0.8 / 0.1 by default (ELECTRA's released code: 0.85 / 0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from mebert.data import spans

NEXT_SENTENCE_MODES = ("nsp", "sop", "none")


@dataclasses.dataclass(frozen=True)
class ExampleOptions:
  seq_len: int = 128
  max_predictions_per_seq: int = 20
  masked_lm_prob: float = 0.15
  short_seq_prob: float = 0.1
  whole_word_masking: bool = False
  next_sentence: str = "nsp"
  mask_token_prob: float = 0.8  # of the chosen tokens: [MASK]; random_token_prob: a random token
  random_token_prob: float = 0.1
  cross_document: bool = False  # RoBERTa's FULL-SENTENCES spans (mebert.data.spans)

  def __post_init__(self):
    if self.next_sentence not in NEXT_SENTENCE_MODES:
      raise ValueError(f"next_sentence must be one of {NEXT_SENTENCE_MODES}, not {self.next_sentence!r}")
    if self.seq_len < 8:
      raise ValueError(f"seq_len must be >= 8, not {self.seq_len}")
    for key in ("mask_token_prob", "random_token_prob"):
      if not 0.0 <= getattr(self, key) <= 1.0:
        raise ValueError(f"data.{key}={getattr(self, key)} is not a probability in [0, 1]")
    if self.mask_token_prob + self.random_token_prob > 1.0:
      raise ValueError(f"data.mask_token_prob={self.mask_token_prob} + data.random_token_prob="
                       f"{self.random_token_prob} exceed 1 (the rest of the chosen tokens stay)")
    if self.cross_document and self.next_sentence != "none":
      raise ValueError(f"data.cross_document=True needs data.next_sentence='none', not "
                       f"{self.next_sentence!r}: a span has no sentence pair")
    if self.cross_document and self.short_seq_prob:
      raise ValueError(f"data.short_seq_prob={self.short_seq_prob} must be 0 with "
                       "data.cross_document=True: its spans are a fixed partition of the text")

  @property
  def max_num_tokens(self) -> int:
    return self.seq_len - (2 if self.next_sentence == "none" else 3)


def truncate_seq_pair(a: np.ndarray, b: np.ndarray, max_num_tokens: int, rng: np.random.Generator):
  """BERT's truncate_seq_pair: trim the longer side one token at a time, from the front or the back
  at random, until the pair fits (ties trim b)."""
  excess = len(a) + len(b) - max_num_tokens
  if excess <= 0:
    return a, b
  la, lb = len(a), len(b)
  k = min(excess, abs(la - lb))  # first the longer side comes down to the shorter one's length...
  if la > lb:
    la -= k
  else:
    lb -= k
  rest = excess - k  # ...then they alternate, b first
  lb -= (rest + 1) // 2
  la -= rest // 2

  def trim(x, n):
    front = int(rng.binomial(len(x) - n, 0.5)) if len(x) > n else 0
    return x[front:front + n]

  return trim(a, la), trim(b, lb)


def mask_tokens(ids: np.ndarray, special: np.ndarray, rng: np.random.Generator, *, masked_lm_prob: float,
                max_predictions: int, mask_id: int, replacement_ids: np.ndarray,
                word_start: np.ndarray | None = None, mask_token_prob: float = 0.8,
                random_token_prob: float = 0.1):
  """Masked-LM corruption of one sequence. Returns (corrupted ids, sorted positions, original ids).

  `special` marks positions never to predict ([CLS], [SEP]). With `word_start` (bool per vocab id),
  whole words are chosen: a word is a word-start token and the continuation tokens after it, and a
  word that would overflow the budget is skipped, as in the original. Each chosen token is then
  [MASK] with mask_token_prob, a random token with random_token_prob, else unchanged (BERT:
  0.8 / 0.1 / 0.1).
  """
  cand = np.flatnonzero(~special)
  if not len(cand):
    return ids.copy(), np.zeros(0, np.int64), np.zeros(0, ids.dtype)
  budget = min(max_predictions, max(1, int(round(len(cand) * masked_lm_prob))))
  if word_start is None:
    chosen = np.sort(rng.permutation(cand)[:budget])
  else:
    # A word also starts wherever candidates are not adjacent (after [CLS]/[SEP]).
    starts = word_start[ids[cand]] | np.concatenate([[True], np.diff(cand) > 1])
    bounds = np.append(np.flatnonzero(starts), len(cand))
    picked, count = [], 0
    for w in rng.permutation(len(bounds) - 1):
      size = bounds[w + 1] - bounds[w]
      if count + size <= budget:
        picked.append(cand[bounds[w]:bounds[w + 1]])
        count += size
        if count == budget:
          break
    chosen = np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
  out = ids.copy()
  r = rng.random(len(chosen))
  out[chosen[r < mask_token_prob]] = mask_id
  rand = chosen[r >= 1.0 - random_token_prob]  # the top band, so BERT's rates keep their stream
  out[rand] = rng.choice(replacement_ids, size=len(rand))
  return out, chosen, ids[chosen]


def _gather(sents: Sequence[np.ndarray], start: int, target: int) -> list[np.ndarray]:
  """Sentences from `start` until their total length reaches `target` (at least one sentence)."""
  out, n = [], 0
  for j in range(start, len(sents)):
    out.append(sents[j])
    n += len(sents[j])
    if n >= target:
      break
  return out


def _concat(parts: Sequence[np.ndarray]) -> np.ndarray:
  return np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)


class ExampleMaker:
  """Makes example `index` of `epoch` from a doc store; picklable (grain workers get a copy).

  With options.cross_document the examples are `span_index`'s spans (built from the store when
  not given: mebert.data.spans.build_spans), else the store's chunks."""

  def __init__(self, store, tokenizer, options: ExampleOptions, seed: int, span_index=None):
    self.store, self.options, self.seed = store, options, int(seed)
    self.pad_id, self.cls_id, self.sep_id, self.mask_id = (tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id,
                                                           tokenizer.mask_id)
    self.word_start = np.asarray(tokenizer.word_start, bool) if options.whole_word_masking else None
    self.replacement_ids = np.setdiff1d(np.arange(tokenizer.vocab_size, dtype=np.int32), tokenizer.special_ids)
    self.spans = None
    if options.cross_document:
      self.spans = span_index or spans.build_spans(store, self.sep_id, options.max_num_tokens)

  def __len__(self) -> int:
    return (self.spans or self.store).num_examples

  def _pair(self, rng: np.random.Generator, d: int, sents: Sequence[np.ndarray], start: int):
    """(tokens_a, tokens_b, label) before truncation; label 1 = random next / swapped, -1 = no
    sentence task (next_sentence="none": the loss and metrics skip it, as they skip empty slots)."""
    o = self.options
    target = o.max_num_tokens
    if rng.random() < o.short_seq_prob:
      target = int(rng.integers(2, o.max_num_tokens + 1))
    chunk = _gather(sents, start, target)
    if o.next_sentence == "none":
      return _concat(chunk), np.zeros(0, np.int32), -1
    if len(chunk) == 1 and len(chunk[0]) >= 2:  # see module docstring
      cut = int(rng.integers(1, len(chunk[0])))
      chunk = [chunk[0][:cut], chunk[0][cut:]]
    a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
    a, b = _concat(chunk[:a_end]), _concat(chunk[a_end:])
    if o.next_sentence == "sop":
      return (b, a, 1) if rng.random() < 0.5 else (a, b, 0)
    if len(chunk) >= 2 and rng.random() >= 0.5:
      return a, b, 0
    other = d
    for _ in range(10):  # as the original: up to 10 tries at a document other than this one
      other = int(rng.integers(self.store.num_docs))
      if other != d:
        break
    osents = self.store.doc(other)
    if not len(osents):
      return a, b, 0
    return a, _concat(_gather(osents, int(rng.integers(len(osents))), target - len(a))), 1

  def compact(self, epoch: int, index: int) -> dict[str, np.ndarray]:
    """Example `index` of `epoch` unpadded: input_ids, token_type_ids [n]; masked_lm_positions,
    masked_lm_ids [p] (positions within the example); next_sentence_labels, example_ids [1].
    The packer (packing.py) lays several of these into one row; __call__ pads one alone."""
    o = self.options
    rng = np.random.default_rng([self.seed, int(epoch), int(index)])
    if self.spans is not None:  # fits by construction; its inner [SEP]s separate documents
      a, b, label = self.spans.span(int(index), rng), np.zeros(0, np.int32), -1
    else:
      d, sents, start = self.store.locate(int(index), rng)
      a, b, label = self._pair(rng, d, sents, start)
      a, b = truncate_seq_pair(a, b, o.max_num_tokens, rng)
    pieces = [[self.cls_id], a, [self.sep_id]] + ([b, [self.sep_id]] if o.next_sentence != "none" else [])
    ids = np.concatenate(pieces).astype(np.int32)
    n = len(ids)
    # Never predicted: [CLS] and every [SEP] (text never holds one: docstore maps literals to [UNK]).
    special = (ids == self.cls_id) | (ids == self.sep_id)
    ids_m, pos, labels = mask_tokens(ids, special, rng, masked_lm_prob=o.masked_lm_prob,
                                     max_predictions=o.max_predictions_per_seq, mask_id=self.mask_id,
                                     replacement_ids=self.replacement_ids, word_start=self.word_start,
                                     mask_token_prob=o.mask_token_prob,
                                     random_token_prob=o.random_token_prob)
    types = np.zeros(n, np.int32)
    types[len(a) + 2:] = 1  # B and its [SEP]; empty range in "none" mode
    return {"input_ids": ids_m, "token_type_ids": types,
            "masked_lm_positions": pos.astype(np.int32), "masked_lm_ids": labels.astype(np.int32),
            "next_sentence_labels": np.array([label], np.int32),
            "example_ids": np.array([np.int64(epoch) * np.int64(len(self)) + np.int64(index)])}

  def __call__(self, epoch: int, index: int) -> dict[str, np.ndarray]:
    """The example alone in a row of seq_len tokens and max_predictions_per_seq predictions."""
    ex = self.compact(epoch, index)
    n, p = len(ex["input_ids"]), len(ex["masked_lm_positions"])
    L, P = self.options.seq_len, self.options.max_predictions_per_seq
    out = {
        "input_ids": np.full(L, self.pad_id, np.int32),
        "token_type_ids": np.zeros(L, np.int32),
        "segment_ids": np.zeros(L, np.int32),
        "positions": np.arange(L, dtype=np.int32),
        "masked_lm_positions": np.zeros(P, np.int32),
        "masked_lm_ids": np.zeros(P, np.int32),
        "masked_lm_weights": np.zeros(P, np.float32),
        "next_sentence_labels": ex["next_sentence_labels"][0],
        "example_ids": ex["example_ids"][0],
    }
    out["input_ids"][:n] = ex["input_ids"]
    out["token_type_ids"][:n] = ex["token_type_ids"]
    out["segment_ids"][:n] = 1
    out["masked_lm_positions"][:p] = ex["masked_lm_positions"]
    out["masked_lm_ids"][:p] = ex["masked_lm_ids"]
    out["masked_lm_weights"][:p] = 1.0
    return out
