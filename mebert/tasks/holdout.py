"""Deterministic held-out splits of a training file: by a hash of each example's text, or by a hash
of the sentences that contain it.

SST-2's train.tsv holds every phrase of a sentence's parse tree as its own example ("the movie is
n't good", "is n't good", "good", ...). A hash of each phrase scatters the phrases of one sentence
over both sides: 900 of 1,000 sampled held-out phrases appeared word for word inside a training
example, so a held-out score measured recall of seen text. `holdout_group="containment"` splits by
source sentence instead: the roots (phrases inside no longer phrase: the whole sentences) are
hashed, and a phrase is held out only if every root that contains it is held out. Then no held-out
phrase occurs inside a training example (a training phrase may still occur inside a held-out one,
as common phrases of GLUE's train do inside its dev sentences).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

GROUPS = ("text", "containment")
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the span hash (golden ratio)
_TABLE_BITS = 22
_TABLE_MASK = np.uint64((1 << _TABLE_BITS) - 1)


def _bucket(key: str) -> float:
  return int.from_bytes(hashlib.md5(key.encode("utf-8")).digest()[:8], "little") / 2.0**64


def _text_key(ex) -> str:
  return json.dumps([ex.text, ex.pair], ensure_ascii=False)


def _span_hashes(ids: np.ndarray, proper: bool) -> tuple[np.ndarray, np.ndarray]:
  """(row, hash) of every contiguous word span of each row of ids [n, k] (proper: not the whole
  row). Polynomial hashes mod 2^64: a collision (odds ~1e-8 at SST-2's size) only moves a phrase
  to the training side."""
  n, k = ids.shape
  prefix = np.zeros((n, k + 1), np.uint64)
  power = np.uint64(1)
  with np.errstate(over="ignore"):
    for i in range(k):
      prefix[:, i + 1] = prefix[:, i] * _BASE + ids[:, i]
    rows, hashes = [], []
    for length in range(1, k + (0 if proper else 1)):
      power = power * _BASE
      h = prefix[:, length:] - prefix[:, :-length] * power
      rows.append(np.repeat(np.arange(n), h.shape[1]))
      hashes.append(h.ravel())
  if not hashes:
    return np.zeros(0, np.int64), np.zeros(0, np.uint64)
  return np.concatenate(rows), np.concatenate(hashes)


def containment_sides(texts: list[str], bucket_of_root) -> dict[str, str]:
  """For each distinct text: "held", "train" or "none", from the sides of the roots containing it.

  bucket_of_root(root_text) -> "held" | "train" | "none". A text is held out when every root that
  contains it is; in training when any is; else on neither side (a nested selection split's)."""
  unique = sorted(set(texts))
  words = [t.split() for t in unique]
  vocab: dict[str, int] = {}
  coded = [np.array([vocab.setdefault(w, len(vocab) + 1) for w in ws], np.uint64) for ws in words]
  by_length: dict[int, list[int]] = {}
  for i, c in enumerate(coded):
    by_length.setdefault(len(c), []).append(i)
  full = np.zeros(len(unique), np.uint64)  # each text's own hash
  for length, members in by_length.items():
    if length:
      ids = np.stack([coded[i] for i in members])
      full[members] = _span_hashes(ids, proper=False)[1][-len(members):]
  order = np.argsort(full)
  sorted_full = full[order]

  # Most spans are no text: a table of the texts' low hash bits rules them out with one gather,
  # and only the rest are looked up in the sorted hashes (5x faster on SST-2's 10M spans).
  maybe = np.zeros(1 << _TABLE_BITS, bool)
  maybe[full & _TABLE_MASK] = True

  def texts_matching(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask of hashes that are some text's, those texts' indices)."""
    hit = maybe[hashes & _TABLE_MASK]
    candidates = np.flatnonzero(hit)
    pos = np.minimum(np.searchsorted(sorted_full, hashes[candidates]), len(sorted_full) - 1)
    found = sorted_full[pos] == hashes[candidates]
    hit[candidates[~found]] = False
    return hit, order[pos[found]]

  inside_longer = np.zeros(len(unique), bool)
  for length, members in by_length.items():
    if length > 1:
      inside_longer[texts_matching(_span_hashes(np.stack([coded[i] for i in members]),
                                                proper=True)[1])[1]] = True
  roots = np.flatnonzero(~inside_longer)
  side_code = {"train": 0, "held": 1, "none": 2}
  root_side = np.array([side_code[bucket_of_root(unique[r])] for r in roots], np.int64)
  # Which texts each root contains: all spans of the roots, matched against the texts' hashes.
  seen = np.zeros((len(unique), 3), bool)
  root_lengths: dict[int, list[int]] = {}
  for j, r in enumerate(roots):
    root_lengths.setdefault(len(coded[r]), []).append(j)
  for length, members in root_lengths.items():
    if length:
      rows, h = _span_hashes(np.stack([coded[roots[j]] for j in members]), proper=False)
      hit, texts_hit = texts_matching(h)
      seen[texts_hit, root_side[np.asarray(members)[rows[hit]]]] = True
  seen[roots, root_side] = True  # a root (an empty text too) is on its own side
  out = {}
  for i, text in enumerate(unique):
    train, held, none = seen[i]
    out[text] = "train" if train else ("held" if held and not none else "none")
  return out


def holdout_split(examples: list, fraction: float, offset: float = 0.0, group: str = "text"):
  """(train, held out): deterministic, independent of the seed; duplicated texts land on one side.

  The held-out part is hash buckets [offset, offset + fraction); buckets below offset are on
  neither side, so a selection split (offset 0.05) never sees what an evaluation split (fraction
  0.05) holds. group="text" hashes each example's text (and pair); "containment" hashes the
  sentences that contain it (see the module docstring)."""
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"data.holdout_fraction={fraction} must be in (0, 1) when data.eval_files "
                     "is empty")
  if not 0.0 <= offset < 1.0 - fraction:
    raise ValueError(f"data.holdout_offset={offset} must be in [0, 1 - data.holdout_fraction="
                     f"{1.0 - fraction:g})")
  if group not in GROUPS:
    raise ValueError(f"data.holdout_group={group!r} is not one of {GROUPS}")

  def side(key: str) -> str:
    bucket = _bucket(key)
    return "none" if bucket < offset else ("held" if bucket < offset + fraction else "train")

  if group == "containment":
    if any(ex.pair is not None or not isinstance(ex.text, str) for ex in examples):
      raise ValueError("data.holdout_group='containment' is for single-sentence tasks "
                       "(set task.text_pair_column='' or use data.holdout_group='text')")
    sides = containment_sides([ex.text for ex in examples],
                              lambda root: side(json.dumps([root, None], ensure_ascii=False)))
    side_of = lambda ex: sides[ex.text]
  else:
    side_of = lambda ex: side(_text_key(ex))
  train, held = [], []
  for ex in examples:
    s = side_of(ex)
    if s != "none":
      (held if s == "held" else train).append(ex)
  if not train or not held:
    raise ValueError(f"data.holdout_fraction={fraction} (offset {offset}) leaves an empty split "
                     f"of {len(examples)} examples")
  return train, held
