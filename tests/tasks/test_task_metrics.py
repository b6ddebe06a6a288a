"""mebert.tasks.metrics against scikit-learn, scipy and seqeval (skipped where not installed)."""

import warnings

import numpy as np
import pytest

from mebert.tasks import metrics


def _labels(rng, n, k):
  return rng.integers(0, k, n), rng.integers(0, k, n)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [2, 3, 5])
def test_classification_metrics_match_sklearn(seed, k):
  skm = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(seed)
  y, p = _labels(rng, int(rng.integers(1, 60)), k)
  assert metrics.accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p))
  assert metrics.f1_macro(y, p) == pytest.approx(skm.f1_score(y, p, average="macro", zero_division=0))
  assert metrics.matthews_corrcoef(y, p) == pytest.approx(skm.matthews_corrcoef(y, p), abs=1e-12)
  if k == 2:
    assert metrics.f1_binary(y, p) == pytest.approx(skm.f1_score(y, p, zero_division=0))


@pytest.mark.parametrize("y, p", [([1, 1, 1], [1, 1, 1]), ([0, 0], [0, 0]), ([0, 1], [1, 0]),
                                  ([0, 0, 1], [1, 1, 1]), ([2, 2], [2, 0])])
def test_classification_edge_cases_match_sklearn(y, p):
  skm = pytest.importorskip("sklearn.metrics")
  with np.errstate(all="ignore"), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    assert metrics.matthews_corrcoef(y, p) == pytest.approx(skm.matthews_corrcoef(y, p))
    assert metrics.f1_macro(y, p) == pytest.approx(skm.f1_score(y, p, average="macro", zero_division=0))
    assert metrics.f1_binary(y, p, 1) == pytest.approx(
        skm.f1_score(y, p, labels=[1], average="macro", zero_division=0))  # class 1's F1


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy(seed):
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(seed)
  x = rng.normal(size=50)
  y = 0.5 * x + rng.normal(size=50)
  ties_x, ties_y = np.round(x), np.round(y * 2) / 2  # many ties: average ranks matter
  for a, b in ((x, y), (ties_x, ties_y), (x, ties_y)):
    assert metrics.pearson(a, b) == pytest.approx(stats.pearsonr(a, b)[0], abs=1e-12)
    assert metrics.spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)
  np.testing.assert_array_equal(metrics.rankdata(ties_x), stats.rankdata(ties_x))
  assert metrics.pearson([1, 1, 1], [1, 2, 3]) == 0.0  # scipy: NaN; 0.0 keeps averages defined


def _random_tags(rng, n, scheme):
  types = ["PER", "ORG", "LOC"]
  prefixes = {"iob2": "BI", "iobes": "BIES"}[scheme]
  return [("O" if rng.random() < 0.4 else f"{rng.choice(list(prefixes))}-{rng.choice(types)}")
          for _ in range(n)]


@pytest.mark.parametrize("scheme", ["iob2", "iobes"])
@pytest.mark.parametrize("seed", range(4))
def test_span_f1_matches_seqeval_including_ill_formed_tags(scheme, seed):
  seqeval = pytest.importorskip("seqeval.metrics")
  from seqeval.metrics.sequence_labeling import get_entities

  rng = np.random.default_rng(seed)
  gold = [_random_tags(rng, int(rng.integers(1, 15)), scheme) for _ in range(30)]
  # Predictions: gold with some tags changed, so there are exact, partial and spurious spans.
  pred = [[t if rng.random() < 0.7 else _random_tags(rng, 1, scheme)[0] for t in s] for s in gold]
  for s in gold + pred:
    assert metrics.get_entities(s) == get_entities(s)
  scores = metrics.span_scores(gold, pred)
  assert scores["span_f1"] == pytest.approx(seqeval.f1_score(gold, pred))
  assert scores["span_precision"] == pytest.approx(seqeval.precision_score(gold, pred))
  assert scores["span_recall"] == pytest.approx(seqeval.recall_score(gold, pred))


def test_span_f1_on_conll_slice_matches_seqeval(shared_data):
  seqeval = pytest.importorskip("seqeval.metrics")
  sentences, current = [], []
  for line in (shared_data / "conll2003" / "valid.txt").read_text().splitlines()[:6000]:
    cols = line.split()
    if not cols or cols[0] == "-DOCSTART-":
      if current:
        sentences.append(current)
      current = []
    else:
      current.append(cols[3])
  rng = np.random.default_rng(0)
  tags = sorted({t for s in sentences for t in s})
  pred = [[t if rng.random() < 0.9 else str(rng.choice(tags)) for t in s] for s in sentences]
  assert metrics.span_scores(sentences, pred)["span_f1"] == pytest.approx(
      seqeval.f1_score(sentences, pred))


def test_span_examples():
  assert metrics.get_entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == [
      ("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 4), ("ORG", 5, 5)]
  perfect = metrics.span_scores([["B-PER", "O"]], [["B-PER", "O"]])
  assert perfect["span_f1"] == 1.0
  assert metrics.span_scores([["O"]], [["O"]])["span_f1"] == 0.0
  with pytest.raises(ValueError, match="sentence 0"):
    metrics.span_scores([["O", "O"]], [["O"]])
