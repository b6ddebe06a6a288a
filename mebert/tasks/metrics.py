"""Task metrics from the field's libraries: scikit-learn (accuracy, F1, Matthews correlation),
scipy (Pearson, Spearman) and seqeval (entity-level span F1, its default conlleval-compatible
chunking of IOB2/IOBES tags).

Undefined values are 0.0: an F1 without positives (scikit-learn's zero_division=0, seqeval's
default) and a correlation of a constant input (scipy returns NaN; 0.0 keeps early stopping and
averages over seeds defined).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from scipy import stats
from seqeval.metrics.sequence_labeling import get_entities as _seqeval_entities
from seqeval.metrics.sequence_labeling import precision_recall_fscore_support
from sklearn import metrics as skm


def accuracy(y_true, y_pred) -> float:
  return float(skm.accuracy_score(y_true, y_pred)) if len(y_true) else 0.0


def f1_binary(y_true, y_pred, positive=1) -> float:
  """F1 of the positive class (also when it is absent from both: 0.0)."""
  if not len(y_true):
    return 0.0
  return float(skm.f1_score(y_true, y_pred, labels=[positive], average="macro", zero_division=0))


def f1_macro(y_true, y_pred) -> float:
  """Unweighted mean of per-class F1 over the classes present in y_true or y_pred."""
  return float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0)) if len(y_true) else 0.0


def matthews_corrcoef(y_true, y_pred) -> float:
  """Multi-class MCC (Gorodkin 2004); 0.0 when undefined."""
  if not len(y_true):
    return 0.0
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # a constant column: sklearn returns 0.0
    return float(skm.matthews_corrcoef(y_true, y_pred))


def _correlation(fn, x, y) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
    return 0.0
  return float(np.clip(fn(x, y)[0], -1.0, 1.0))


def pearson(x, y) -> float:
  return _correlation(stats.pearsonr, x, y)


def spearman(x, y) -> float:
  return _correlation(stats.spearmanr, x, y)


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
  """Entity spans (type, first index, last index) of one tag sequence, as seqeval chunks them."""
  return _seqeval_entities(list(tags))


def span_scores(true_seqs: Sequence[Sequence[str]], pred_seqs: Sequence[Sequence[str]]) -> dict:
  """Micro-averaged entity-level precision, recall and F1 (seqeval's default mode)."""
  true_seqs, pred_seqs = [list(s) for s in true_seqs], [list(s) for s in pred_seqs]
  if len(true_seqs) != len(pred_seqs):
    raise ValueError(f"{len(true_seqs)} gold sentences but {len(pred_seqs)} predicted")
  for i, (t, p) in enumerate(zip(true_seqs, pred_seqs)):
    if len(t) != len(p):
      raise ValueError(f"sentence {i}: {len(t)} gold tags but {len(p)} predicted")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # seqeval warns about undefined scores: they are 0.0 here
    precision, recall, f1, gold = precision_recall_fscore_support(
        true_seqs, pred_seqs, average="micro", zero_division=0)
  # seqeval chunks the sentences as one sequence with "O" between them, as conlleval does.
  predicted = len(_seqeval_entities(pred_seqs))
  return {"span_precision": float(precision), "span_recall": float(recall), "span_f1": float(f1),
          "gold_entities": int(gold), "predicted_entities": predicted}


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
