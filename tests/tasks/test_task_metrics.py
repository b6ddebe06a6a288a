"""mebert.tasks.metrics: the libraries' numbers on hand-computed cases, and mebert's conventions
where they leave a value undefined (0.0 instead of NaN or a warning)."""

import math

import numpy as np
import pytest

from mebert.tasks import metrics


def test_classification_by_hand():
  y, p = [0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 0, 2]
  assert metrics.accuracy(y, p) == pytest.approx(4 / 6)
  # class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 2 fp 1 fn 1 -> 2/3; class 2: 1.0
  assert metrics.f1_macro(y, p) == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
  assert metrics.f1_binary(y, p, positive=1) == pytest.approx(2 / 3)
  # Gorodkin's MCC from the confusion matrix: c*s - t.p over sqrt((s^2 - p.p)(s^2 - t.t)).
  t, q, c, s = np.array([2, 3, 1]), np.array([2, 3, 1]), 4, 6
  assert metrics.matthews_corrcoef(y, p) == pytest.approx(
      (c * s - t @ q) / math.sqrt((s * s - q @ q) * (s * s - t @ t)))
  result = metrics.classification_metrics([0, 1, 1, 0], [0, 1, 0, 0], 2, positive=1)
  assert result == pytest.approx({"accuracy": 0.75, "f1": 2 / 3, "f1_macro": (0.8 + 2 / 3) / 2,
                                  "mcc": 1 / math.sqrt(3)})


@pytest.mark.parametrize("y, p", [([1, 1, 1], [1, 1, 1]), ([0, 0], [0, 0]), ([0, 0, 1], [1, 1, 1]),
                                  ([], [])])
def test_undefined_classification_values_are_zero(y, p, recwarn):
  assert metrics.matthews_corrcoef(y, p) == 0.0
  if 1 not in y and 1 not in p:
    assert metrics.f1_binary(y, p, positive=1) == 0.0
  assert not [w for w in recwarn if "zero_division" in str(w.message) or "invalid" in str(w.message)]


def test_correlations_by_hand_and_constant_input():
  x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 4.0]
  dx, dy = np.subtract(x, 2.5), np.subtract(y, 3.75)
  assert metrics.pearson(x, y) == pytest.approx(dx @ dy / math.sqrt((dx @ dx) * (dy @ dy)))
  # ranks of y with the tie averaged: 1, 2.5, 4, 2.5
  r = np.array([1, 2.5, 4, 2.5]) - 2.5
  assert metrics.spearman(x, y) == pytest.approx((np.arange(4) - 1.5) @ r / math.sqrt(5 * (r @ r)))
  assert metrics.pearson([1, 1, 1], [1, 2, 3]) == 0.0  # scipy: NaN and a warning
  assert metrics.spearman([1, 2, 3], [5, 5, 5]) == 0.0
  reg = metrics.regression_metrics(x, y)
  assert reg["mse"] == pytest.approx(np.mean((np.array(x) - y) ** 2))


def test_span_examples():
  assert metrics.get_entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == [
      ("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 4), ("ORG", 5, 5)]
  perfect = metrics.span_scores([["B-PER", "O"]], [["B-PER", "O"]])
  assert perfect["span_f1"] == 1.0 and perfect["gold_entities"] == 1
  assert metrics.span_scores([["O"]], [["O"]])["span_f1"] == 0.0
  # Sentences are separate: an I- tag at a sentence start begins a new entity (conlleval).
  gold = [["O", "B-PER"], ["I-PER", "O"]]
  pred = [["O", "B-PER"], ["B-PER", "O"]]
  scores = metrics.span_scores(gold, pred)
  assert (scores["gold_entities"], scores["predicted_entities"], scores["span_f1"]) == (2, 2, 1.0)
  # One of two gold entities found, one spurious: precision 1/2, recall 1/2.
  scores = metrics.span_scores([["B-LOC", "O", "B-ORG", "I-ORG"]], [["B-LOC", "O", "B-ORG", "O"]])
  assert scores["span_precision"] == scores["span_recall"] == scores["span_f1"] == 0.5
  with pytest.raises(ValueError, match="sentence 0"):
    metrics.span_scores([["O", "O"]], [["O"]])
