"""Task metrics in numpy: accuracy, F1 (binary and macro), Matthews correlation, Pearson and
Spearman, and entity-level span F1 for IOB2/IOBES tags.

No scikit-learn, scipy or seqeval at runtime; tests check every function against them. Edge cases
follow the references: an undefined F1 or correlation (no positives, a constant input) is 0.0, as
scikit-learn's zero_division=0 and seqeval's default give (scipy returns NaN for a constant input;
0.0 keeps early stopping and averages over seeds well-defined).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def accuracy(y_true, y_pred) -> float:
  y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
  return float(np.mean(y_true == y_pred)) if y_true.size else 0.0


def _f1(tp: float, fp: float, fn: float) -> float:
  denom = 2 * tp + fp + fn
  return float(2 * tp / denom) if denom else 0.0


def f1_binary(y_true, y_pred, positive=1) -> float:
  """F1 of the positive class (scikit-learn's average="binary")."""
  t, p = np.asarray(y_true) == positive, np.asarray(y_pred) == positive
  return _f1(float(np.sum(t & p)), float(np.sum(~t & p)), float(np.sum(t & ~p)))


def f1_macro(y_true, y_pred) -> float:
  """Unweighted mean of per-class F1 over the classes present in y_true or y_pred (scikit-learn)."""
  y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
  classes = np.union1d(y_true, y_pred)
  if not classes.size:
    return 0.0
  return float(np.mean([f1_binary(y_true, y_pred, c) for c in classes]))


def matthews_corrcoef(y_true, y_pred) -> float:
  """Multi-class MCC (Gorodkin 2004), as scikit-learn computes it; 0.0 when undefined."""
  y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
  classes, inverse = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
  t, p = inverse[:y_true.size], inverse[y_true.size:]
  confusion = np.zeros((classes.size, classes.size), np.float64)
  np.add.at(confusion, (t, p), 1.0)
  t_sum, p_sum = confusion.sum(axis=1), confusion.sum(axis=0)
  n, correct = confusion.sum(), np.trace(confusion)
  cov_tp = correct * n - t_sum @ p_sum
  cov_pp = n * n - p_sum @ p_sum
  cov_tt = n * n - t_sum @ t_sum
  if cov_pp * cov_tt == 0:
    return 0.0
  return float(cov_tp / np.sqrt(cov_tt * cov_pp))


def pearson(x, y) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.size < 2:
    return 0.0
  dx, dy = x - x.mean(), y - y.mean()
  denom = np.sqrt((dx @ dx) * (dy @ dy))
  return float(np.clip((dx @ dy) / denom, -1.0, 1.0)) if denom > 0 else 0.0


def rankdata(x) -> np.ndarray:
  """1-based ranks, ties sharing their average rank (scipy.stats.rankdata's default)."""
  x = np.asarray(x)
  order = np.argsort(x, kind="stable")
  sorted_x = x[order]
  starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
  ends = np.r_[starts[1:], x.size]
  average = (starts + ends + 1) / 2.0  # mean of the 1-based positions start+1 .. end
  ranks = np.empty(x.size, np.float64)
  ranks[order] = np.repeat(average, ends - starts)
  return ranks


def spearman(x, y) -> float:
  return pearson(rankdata(x), rankdata(y))


# Entity spans, seqeval's default (conlleval-compatible) chunking: an I- tag after O or after
# another type starts an entity, as does B-/S-; E-/S- end one. Spans are (type, start, end).

def _split_tag(tag: str) -> tuple[str, str]:
  prefix, type_ = tag[0], tag[1:].split("-", maxsplit=1)[-1]
  return prefix, type_ or "_"


def _end_of_chunk(prev_tag, tag, prev_type, type_) -> bool:
  return (prev_tag in ("E", "S")
          or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
          or (prev_tag not in ("O", ".") and prev_type != type_))


def _start_of_chunk(prev_tag, tag, prev_type, type_) -> bool:
  return (tag in ("B", "S")
          or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
          or (tag not in ("O", ".") and prev_type != type_))


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
  """Entity spans (type, first index, last index) of one tag sequence."""
  chunks, prev_tag, prev_type, begin = [], "O", "", 0
  for i, tag in enumerate(list(tags) + ["O"]):
    prefix, type_ = _split_tag(tag)
    if _end_of_chunk(prev_tag, prefix, prev_type, type_):
      chunks.append((prev_type, begin, i - 1))
    if _start_of_chunk(prev_tag, prefix, prev_type, type_):
      begin = i
    prev_tag, prev_type = prefix, type_
  return chunks


def span_scores(true_seqs: Sequence[Sequence[str]], pred_seqs: Sequence[Sequence[str]]) -> dict:
  """Micro-averaged entity-level precision, recall and F1 (seqeval's default mode)."""
  true_spans, pred_spans = set(), set()
  for i, (t, p) in enumerate(zip(true_seqs, pred_seqs, strict=True)):
    if len(t) != len(p):
      raise ValueError(f"sentence {i}: {len(t)} gold tags but {len(p)} predicted")
    true_spans |= {(i,) + s for s in get_entities(t)}
    pred_spans |= {(i,) + s for s in get_entities(p)}
  correct = len(true_spans & pred_spans)
  precision = correct / len(pred_spans) if pred_spans else 0.0
  recall = correct / len(true_spans) if true_spans else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {"span_precision": precision, "span_recall": recall, "span_f1": f1,
          "gold_entities": len(true_spans), "predicted_entities": len(pred_spans)}


def classification_metrics(y_true, y_pred, num_classes: int, positive: int = 1) -> dict:
  out = {"accuracy": accuracy(y_true, y_pred), "f1_macro": f1_macro(y_true, y_pred),
         "mcc": matthews_corrcoef(y_true, y_pred)}
  if num_classes == 2:
    out["f1"] = f1_binary(y_true, y_pred, positive)
  return out


def regression_metrics(y_true, y_pred) -> dict:
  y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
  p, s = pearson(y_true, y_pred), spearman(y_true, y_pred)
  return {"pearson": p, "spearman": s, "pearson_spearman": (p + s) / 2,
          "mse": float(np.mean((y_true - y_pred) ** 2)) if y_true.size else 0.0}


def token_metrics(true_seqs, pred_seqs) -> dict:
  flat_t = [t for s in true_seqs for t in s]
  flat_p = [t for s in pred_seqs for t in s]
  return {**span_scores(true_seqs, pred_seqs), "accuracy": accuracy(flat_t, flat_p)}
