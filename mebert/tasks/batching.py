"""Tokenized examples and length-bucketed batches (dynamic padding).

Encoding: [CLS] A [SEP] (B [SEP]) with BERT's type ids and `longest_first` truncation to
data.seq_len; WordPiece goes through mebert.interop.wordpiece (BertTokenizerFast parity, word ids),
another family's tokenizer.json through mebert.interop.hf_tokenizer (its own template),
a mebert sentencepiece model through a small equivalent. Token tasks put each word's tag on its
first piece and -1 (ignored) on the rest; the word ids map predictions back to words.

Batching is sort-free bucketing: a shuffled epoch is dealt into per-bucket queues (bucket = the
smallest of data.buckets that fits the row), and a queue that reaches batch_size becomes a batch
padded to its bucket length. Short sentences never pay for long ones, batches stay random within a
bucket, and the step compiles once per bucket. The leftovers of the epoch are packed into the last
batches, padded with empty rows (weight 0). Every batch has exactly batch_size rows. Evaluation
uses this (sorted by length, so its padding is small).

Packing (data.pack, the default for training) goes further: a step's batch_size examples are laid
end to end in rows of data.pack_length tokens (first-fit decreasing), each its own attention
segment with positions restarting at 0, so almost no compute goes to padding. Short-sentence tasks
(SST-2: 13 pieces on average) gain most; rare row counts run padded up to a more common one
(merge_row_counts) rather than compile a step of their own.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from mebert.tasks.data import DataError, Example


class TaskTokenizer:
  """encode(texts, pairs, words=) -> (ids rows, type id rows, word id rows), specials included."""

  def __init__(self, path: str, lowercase: bool = True):
    self.path = path
    if path.endswith(".model"):
      from mebert.data.tokenizer import load_tokenizer

      self._spm = load_tokenizer(path)
      self._wp = None
      ids = self._spm
    else:
      from mebert.interop.hf_tokenizer import load_folder_tokenizer

      # A tokenizer.json of another family (RoBERTa's byte-level BPE, XLM-R's unigram) encodes
      # with its own specials and template (<s> A </s></s> B </s>).
      self._spm = None
      self._wp = load_folder_tokenizer(path, lowercase=None if path.endswith(".json") else lowercase)
      ids = self._wp
    self.pad_id, self.cls_id, self.sep_id = ids.pad_id, ids.cls_id, ids.sep_id
    self.vocab_size = ids.vocab_size

  def encode(self, texts, pairs=None, *, words: bool = False, max_length: int):
    if self._wp is not None:
      rows = self._wp.encode(texts, pairs, is_split_into_words=words, max_length=max_length,
                             truncation="longest_first", padding=None)
      return rows["input_ids"], rows["token_type_ids"], rows["word_ids"]
    return self._encode_spm(texts, pairs, words, max_length)

  def _encode_spm(self, texts, pairs, words, max_length):
    if words:  # each word on its own, so pieces never straddle words
      flat = self._spm.encode_batch([w for ws in texts for w in ws])
      pieces, word_ids, k = [], [], 0
      for ws in texts:
        a, w = [], []
        for j in range(len(ws)):
          a += flat[k]
          w += [j] * len(flat[k])
          k += 1
        pieces.append(a)
        word_ids.append(w)
    else:
      pieces = self._spm.encode_batch(list(texts))
      word_ids = None
    seconds = self._spm.encode_batch(list(pairs)) if pairs is not None else None
    ids, types, wids = [], [], []
    for i, a in enumerate(pieces):
      b = list(seconds[i]) if seconds is not None else []
      a = list(a)
      budget = max_length - (3 if seconds is not None else 2)
      while len(a) + len(b) > budget:  # longest_first: trim the longer side, one piece at a time
        (a if len(a) > len(b) else b).pop()
      row = [self.cls_id] + a + [self.sep_id]
      type_row = [0] * len(row)
      if seconds is not None:
        row += b + [self.sep_id]
        type_row += [1] * (len(b) + 1)
      ids.append(row)
      types.append(type_row)
      w = word_ids[i][:len(a)] if word_ids is not None else []
      wids.append([-1] + w + [-1] * (len(row) - 1 - len(w)))
    return ids, types, wids


@dataclasses.dataclass
class Encoded:
  """Ragged tokenized examples. labels: int class ids [N] / float targets [N] / per-piece tag ids
  (-1 = not a word's first piece) for token tasks, None when unlabeled."""

  input_ids: list[np.ndarray]
  token_type_ids: list[np.ndarray]
  lengths: np.ndarray
  labels: object = None
  word_ids: list[np.ndarray] | None = None  # token tasks
  num_words: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.input_ids)


def encode_examples(examples: list[Example], tokenizer: TaskTokenizer, kind: str,
                    labels: list[str], seq_len: int, labeled: bool = True) -> Encoded:
  token_task = kind == "token_classification"
  pairs = [ex.pair or "" for ex in examples] if any(ex.pair is not None for ex in examples) else None
  ids, types, word_ids = tokenizer.encode([ex.text for ex in examples], pairs, words=token_task,
                                          max_length=seq_len)
  enc = Encoded([np.asarray(r, np.int32) for r in ids], [np.asarray(r, np.int32) for r in types],
                np.array([len(r) for r in ids], np.int32))
  index = {label: i for i, label in enumerate(labels)}
  if token_task:
    enc.word_ids = [np.asarray(w, np.int32) for w in word_ids]
    enc.num_words = np.array([len(ex.text) for ex in examples], np.int32)
    if labeled:
      rows = []
      for ex, w in zip(examples, enc.word_ids):
        if len(ex.label) != len(ex.text):
          raise DataError(f"{ex.where}: {len(ex.text)} words but {len(ex.label)} tags")
        first = np.r_[False, w[1:] != w[:-1]] & (w >= 0)
        first[0] = w[0] >= 0
        tag_ids = np.array([index[str(t)] for t in ex.label], np.int32)
        rows.append(np.where(first, tag_ids[np.maximum(w, 0)], -1).astype(np.int32))
      enc.labels = rows
  elif labeled and kind == "regression":
    enc.labels = np.array([float(ex.label) for ex in examples], np.float32)
  elif labeled:
    enc.labels = np.array([index[str(ex.label)] for ex in examples], np.int32)
  return enc


def bucket_lengths(seq_len: int, buckets=()) -> tuple[int, ...]:
  """The padded lengths batches may have: data.buckets, else 16, 32, 64, ... capped at seq_len."""
  if buckets:
    out = sorted({min(int(b), seq_len) for b in buckets} | {seq_len})
  else:
    out, b = [], 16
    while b < seq_len:
      out.append(b)
      b *= 2
    out.append(seq_len)
  return tuple(out)


def _bucket_index(lengths: np.ndarray, buckets: tuple[int, ...]) -> np.ndarray:
  if len(lengths) and int(np.max(lengths)) > buckets[-1]:
    raise ValueError(f"a row of {int(np.max(lengths))} tokens exceeds the largest bucket "
                     f"{buckets[-1]}")
  return np.searchsorted(np.asarray(buckets), lengths, side="left")


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
  """The shuffled order of n examples in an epoch, deterministic in (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def train_batches(lengths: np.ndarray, buckets: tuple[int, ...], batch_size: int, seed: int,
                  epoch: int) -> list[tuple[np.ndarray, int]]:
  """One epoch as (row indices, padded length) batches; -1 rows are padding. Deterministic in
  (seed, epoch), so a resumed run replays the same epoch and skips what it has done."""
  order = epoch_order(len(lengths), seed, epoch)
  which = _bucket_index(lengths, buckets)
  queues: list[list[int]] = [[] for _ in buckets]
  batches = []
  for i in order:
    q = queues[which[i]]
    q.append(int(i))
    if len(q) == batch_size:
      batches.append((np.array(q, np.int64), buckets[which[i]]))
      q.clear()
  leftovers = [(b, i) for b, q in enumerate(queues) for i in q]  # ascending bucket
  for start in range(0, len(leftovers), batch_size):
    chunk = leftovers[start:start + batch_size]
    rows = np.full(batch_size, -1, np.int64)
    rows[:len(chunk)] = [i for _, i in chunk]
    batches.append((rows, buckets[max(b for b, _ in chunk)]))
  return batches


def eval_batches(lengths: np.ndarray, buckets: tuple[int, ...],
                 batch_size: int) -> list[tuple[np.ndarray, int]]:
  """Rows sorted by length (order does not matter at eval), so padding is minimal."""
  order = np.argsort(lengths, kind="stable")
  which = _bucket_index(lengths, buckets)
  batches = []
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    rows = np.full(batch_size, -1, np.int64)
    rows[:len(chunk)] = chunk
    batches.append((rows, buckets[int(which[chunk].max())]))
  return batches


def steps_per_epoch(lengths: np.ndarray, buckets: tuple[int, ...], batch_size: int) -> int:
  return len(train_batches(lengths, buckets, batch_size, 0, 0))


def make_batch(enc: Encoded, rows: np.ndarray, length: int, kind: str, pad_id: int = 0) -> dict:
  """Padded numpy arrays for the step: input_ids, token_type_ids, segment_ids (1 on real tokens,
  0 on padding), weights (1 per real row), labels ([B] or [B, L] with -1 = ignore)."""
  size = len(rows)
  batch = {"input_ids": np.full((size, length), pad_id, np.int32),
           "token_type_ids": np.zeros((size, length), np.int32),
           "segment_ids": np.zeros((size, length), np.int32),
           "weights": (rows >= 0).astype(np.float32)}
  token_task = kind == "token_classification"
  if token_task:
    labels = np.full((size, length), -1, np.int32)
  else:
    labels = np.zeros(size, np.float32 if kind == "regression" else np.int32)
  for j, r in enumerate(rows):
    if r < 0:
      continue
    n = int(enc.lengths[r])
    if n > length:
      raise ValueError(f"row {r} has {n} tokens, more than its bucket length {length}")
    batch["input_ids"][j, :n] = enc.input_ids[r]
    batch["token_type_ids"][j, :n] = enc.token_type_ids[r]
    batch["segment_ids"][j, :n] = 1
    if enc.labels is not None:
      if token_task:
        labels[j, :n] = enc.labels[r]
      else:
        labels[j] = enc.labels[r]
  batch["labels"] = labels
  return batch


# --- Packing: a step's examples laid end to end in rows of pack_length ------------------------------


def pack_groups(lengths: np.ndarray, pack_length: int, max_segments: int) -> list[list[int]]:
  """First-fit decreasing: positions into `lengths` grouped into rows of at most pack_length tokens
  and max_segments examples. Deterministic (stable sort), so a resumed run packs alike."""
  rows: list[list[int]] = []
  room: list[int] = []
  for i in np.argsort(-np.asarray(lengths), kind="stable"):
    n = int(lengths[i])
    if n > pack_length:
      raise ValueError(f"a row of {n} tokens exceeds data.pack_length={pack_length}")
    for r, free in enumerate(room):
      if n <= free and len(rows[r]) < max_segments:
        rows[r].append(int(i))
        room[r] -= n
        break
    else:
      rows.append([int(i)])
      room.append(pack_length - n)
  return rows


def _epoch_chunks(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
  """The epoch's shuffled example indices, batch_size per step (the last step may have fewer)."""
  order = epoch_order(n, seed, epoch)
  return [order[start:start + batch_size] for start in range(0, n, batch_size)]


def epoch_row_groups(lengths: np.ndarray, batch_size: int, pack_length: int, max_segments: int,
                     seed: int, epoch: int) -> list[tuple[np.ndarray, list[list[int]]]]:
  """Per step of the epoch: its shuffled example indices and their packed rows (pack_groups)."""
  return [(chunk, pack_groups(lengths[chunk], pack_length, max_segments))
          for chunk in _epoch_chunks(len(lengths), batch_size, seed, epoch)]


def most_segments_per_row(groups: list[tuple[np.ndarray, list[list[int]]]]) -> int:
  """The most examples any packed row of an epoch (epoch_row_groups) holds. Sequence heads read
  one [CLS] slot per segment, and the last layer runs only at those slots: [rows, this] rather
  than [rows, pack_length // 2] (SST-2 in rows of 72: 16 slots, not 32). Packing the epoch again
  with this as max_segments gives the same rows: first-fit never reached the limit."""
  return max(len(row) for _, rows in groups for row in rows)


def packed_train_batches(lengths: np.ndarray, batch_size: int, pack_length: int, max_segments: int,
                         row_multiple: int, seed: int, epoch: int,
                         groups: list | None = None) -> list[tuple[np.ndarray, int]]:
  """One epoch as (example indices [batch_size], -1 = none; number of packed rows) pairs: the same
  shuffled batch_size examples per step as unpacked batching would take, so the recipe (batch 32,
  steps per epoch) is unchanged; only padding goes. Row counts are rounded up to row_multiple (data
  parallelism x accumulation); merge_row_counts then decides which counts get a compile. `groups`:
  this epoch's epoch_row_groups when the caller has them already."""
  if groups is None:
    groups = epoch_row_groups(lengths, batch_size, pack_length, max_segments, seed, epoch)
  batches = []
  for chunk, packed_rows in groups:
    rows = np.full(batch_size, -1, np.int64)
    rows[:len(chunk)] = chunk
    batches.append((rows, -(-len(packed_rows) // row_multiple) * row_multiple))
  return batches


def merge_row_counts(steps_per_count: dict[int, int], compile_cost_rows: float) -> dict[int, int]:
  """Maps each packed row count to the count its steps run at. Every distinct count is one more
  compile of the train step; padding a rare count's steps up to a larger count costs their extra
  rows instead. Picks the counts to compile that minimise (rows run over all steps) +
  compile_cost_rows x (counts compiled), the largest count always kept (dynamic programming over
  the sorted counts). SST-2 in rows of 72, compile_cost_rows=250 (data.compile_cost_tokens
  18,000 / 72): steps per count {4: 4, 5: 185, 6: 902, 7: 749, 8: 152, 9: 6, 10: 1} compile 6, 7,
  8 and 10 (4 compiles, not 7; 199 more rows run)."""
  sizes = sorted(steps_per_count)
  if compile_cost_rows <= 0 or not sizes:
    return {s: s for s in sizes}
  freq = [steps_per_count[s] for s in sizes]
  # best[j]: the least cost of the sizes up to j when sizes[j] is compiled; keep[j]: the previous
  # compiled index (-1: none below).
  best, keep = [], []
  for j, size in enumerate(sizes):
    options = []
    for i in range(-1, j):
      below = best[i] if i >= 0 else 0.0
      options.append((below + compile_cost_rows + size * sum(freq[i + 1:j + 1]), i))
    cost, prev = min(options)
    best.append(cost)
    keep.append(prev)
  mapping, j = {}, len(sizes) - 1
  while j >= 0:
    for m in range(keep[j] + 1, j + 1):
      mapping[sizes[m]] = sizes[j]
    j = keep[j]
  return mapping


def make_packed_batch(enc: Encoded, rows: np.ndarray, num_rows: int, pack_length: int,
                      max_segments: int, kind: str, pad_id: int = 0) -> dict:
  """The examples `rows` (-1 = none) packed into [num_rows, pack_length]. Each example is one
  segment (segment_ids 1, 2, ... in its row; 0 = padding) whose positions restart at 0, so
  attention and position encodings see it exactly as if alone. Sequence tasks read the pooled
  vector at cls_positions [num_rows, max_segments]; their labels and weights are [num_rows,
  max_segments] (weight 0 = empty slot). Token tasks keep per-position labels [num_rows, L]."""
  real = rows[rows >= 0]
  groups = pack_groups(enc.lengths[real], pack_length, max_segments)
  if len(groups) > num_rows:
    raise ValueError(f"{len(groups)} packed rows do not fit the batch's {num_rows}")
  shape = (num_rows, pack_length)
  batch = {"input_ids": np.full(shape, pad_id, np.int32), "token_type_ids": np.zeros(shape, np.int32),
           "segment_ids": np.zeros(shape, np.int32), "positions": np.zeros(shape, np.int32),
           "cls_positions": np.zeros((num_rows, max_segments), np.int32),
           "weights": np.zeros((num_rows, max_segments), np.float32)}
  token_task = kind == "token_classification"
  if token_task:
    labels = np.full(shape, -1, np.int32)
  else:
    labels = np.zeros((num_rows, max_segments), np.float32 if kind == "regression" else np.int32)
  for r, group in enumerate(groups):
    offset = 0
    for s, g in enumerate(group):
      i, n = int(real[g]), int(enc.lengths[real[g]])
      span = slice(offset, offset + n)
      batch["input_ids"][r, span] = enc.input_ids[i]
      batch["token_type_ids"][r, span] = enc.token_type_ids[i]
      batch["segment_ids"][r, span] = s + 1
      batch["positions"][r, span] = np.arange(n)
      batch["cls_positions"][r, s] = offset
      batch["weights"][r, s] = 1.0
      if enc.labels is not None:
        if token_task:
          labels[r, span] = enc.labels[i]
        else:
          labels[r, s] = enc.labels[i]
      offset += n
  batch["labels"] = labels
  return batch


def tokenizer_path(folder_or_file: str) -> str:
  """A tokenizer file inside a folder (tokenizer.json, then vocab.txt, then spm.model)."""
  if os.path.isdir(folder_or_file):
    for name in ("tokenizer.json", "vocab.txt", "spm.model"):
      if os.path.isfile(os.path.join(folder_or_file, name)):
        return os.path.join(folder_or_file, name)
    raise FileNotFoundError(f"{folder_or_file}: no tokenizer.json, vocab.txt or spm.model")
  return folder_or_file
