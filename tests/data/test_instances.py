"""Pretraining examples: masking statistics on real text, NSP/SOP semantics, determinism."""

import numpy as np
import pytest

from mebert.data import instances, pipeline

N = 600  # examples per statistic: ~11k masked tokens, so 1% tolerances are > 3 sigma


@pytest.fixture
def wiki_config(data_config, shared_data):
  data_config.corpus = str(shared_data / "wikitext-2-raw" / "wiki.valid.raw")
  data_config.seq_len = 128
  data_config.max_predictions_per_seq = 20
  return data_config


def _examples(maker, n=N, epoch=0):
  return [maker(epoch, i % len(maker)) for i in range(n)]


def _original_ids(ex):
  ids = ex["input_ids"].copy()
  real = ex["masked_lm_weights"] > 0
  ids[ex["masked_lm_positions"][real]] = ex["masked_lm_ids"][real]
  return ids


def _check_layout(ex, tok, seq_len, pairs=True):
  ids, n = _original_ids(ex), int(ex["segment_ids"].sum())
  assert ids[0] == tok.cls_id and ids[n - 1] == tok.sep_id and (ids[n:] == tok.pad_id).all()
  assert (ex["segment_ids"][:n] == 1).all() and (ex["segment_ids"][n:] == 0).all()
  assert np.array_equal(ex["positions"], np.arange(seq_len))
  seps = np.flatnonzero(ids[:n] == tok.sep_id)
  assert len(seps) == (2 if pairs else 1)
  tt = ex["token_type_ids"]
  assert (tt[:seps[0] + 1] == 0).all() and (tt[seps[0] + 1:n] == (1 if pairs else 0)).all() and (tt[n:] == 0).all()
  pos = ex["masked_lm_positions"][ex["masked_lm_weights"] > 0]
  assert np.all(np.diff(pos) > 0) and (ex["masked_lm_positions"][ex["masked_lm_weights"] == 0] == 0).all()
  assert not np.isin(ids[pos], [tok.cls_id, tok.sep_id, tok.pad_id]).any() and (pos < n).all() and (pos > 0).all()
  return ids, n, seps


def test_masking_statistics_on_wikitext(wiki_config, spm_tok):
  maker = pipeline.make_example_maker(wiki_config, spm_tok, split="train", seed=1)
  selected = candidates = masked = kept = 0
  for ex in _examples(maker):
    ids, n, _ = _check_layout(ex, spm_tok, 128)
    w = ex["masked_lm_weights"] > 0
    pos = ex["masked_lm_positions"][w]
    selected += w.sum()
    candidates += n - 3
    masked += (ex["input_ids"][pos] == spm_tok.mask_id).sum()
    kept += (ex["input_ids"][pos] == ex["masked_lm_ids"][w]).sum()
    assert ex["input_ids"].dtype == np.int32 and ex["masked_lm_weights"].dtype == np.float32
  assert abs(selected / candidates - 0.15) < 0.01
  assert abs(masked / selected - 0.8) < 0.02
  assert abs(kept / selected - 0.1) < 0.015  # unchanged (a random pick equal to the original is ~1/2000)
  assert abs(1 - (masked + kept) / selected - 0.1) < 0.015  # random replacement


def test_max_predictions_caps_the_selection(wiki_config, spm_tok):
  wiki_config.max_predictions_per_seq = 5
  maker = pipeline.make_example_maker(wiki_config, spm_tok, split="train", seed=1)
  counts = [ex["masked_lm_weights"].sum() for ex in _examples(maker, 100)]
  assert max(counts) == 5 and np.mean(counts) > 4.5


def test_whole_word_masking_never_splits_a_word(wiki_config, spm_tok):
  wiki_config.whole_word_masking = True
  maker = pipeline.make_example_maker(wiki_config, spm_tok, split="train", seed=2)
  multi_piece_words = selected = candidates = 0
  for ex in _examples(maker, 300):
    ids, n, seps = _check_layout(ex, spm_tok, 128)
    chosen = np.zeros(n, bool)
    chosen[ex["masked_lm_positions"][ex["masked_lm_weights"] > 0]] = True
    starts = spm_tok.word_start[ids[:n]].copy()
    starts[[1, seps[0] + 1]] = True  # a segment starts a word, even if truncation cut it
    word = np.cumsum(starts)
    for w in np.unique(word[chosen]):
      members = chosen[word == w]
      assert members.all(), "a word was partly masked"
      multi_piece_words += len(members) > 1
    selected += chosen.sum()
    candidates += n - 3
  assert multi_piece_words > 100  # the property was really exercised
  assert 0.12 < selected / candidates < 0.16  # a word that would overflow the budget is skipped


def _contains(flat: np.ndarray, seq: np.ndarray) -> bool:
  hay, needle, size = flat.tobytes(), seq.astype(flat.dtype).tobytes(), flat.dtype.itemsize
  i = hay.find(needle)
  while i >= 0 and i % size:
    i = hay.find(needle, i + 1)
  return i >= 0


def _segments(ex, tok):
  ids, n = _original_ids(ex), int(ex["segment_ids"].sum())
  seps = np.flatnonzero(ids[:n] == tok.sep_id)
  return ids[1:seps[0]], ids[seps[0] + 1:seps[1]]


def test_nsp_balance_and_true_next_segments(wiki_config, spm_tok):
  maker = pipeline.make_example_maker(wiki_config, spm_tok, split="train", seed=3)
  exs = _examples(maker, 1000)
  labels = np.array([ex["next_sentence_labels"] for ex in exs])
  assert abs(labels.mean() - 0.5) < 0.05
  contiguous = {0: [], 1: []}
  for ex, label in zip(exs, labels):
    a, b = _segments(ex, spm_tok)
    assert len(a) and len(b)
    if len(a) + len(b) < 125:  # not truncated: A then B should be the document's text iff IsNext
      contiguous[int(label)].append(_contains(maker.store.tokens, np.concatenate([a, b])))
  assert len(contiguous[0]) > 30 and all(contiguous[0])
  assert len(contiguous[1]) > 30 and np.mean(contiguous[1]) < 0.1


def test_sop_negatives_are_swapped_segments(wiki_config, spm_tok):
  wiki_config.next_sentence = "sop"
  maker = pipeline.make_example_maker(wiki_config, spm_tok, split="train", seed=4)
  exs = _examples(maker, 400)
  labels = np.array([ex["next_sentence_labels"] for ex in exs])
  assert abs(labels.mean() - 0.5) < 0.08
  checked = 0
  for ex, label in zip(exs, labels):
    a, b = _segments(ex, spm_tok)
    if len(a) + len(b) < 125:
      checked += 1
      in_order = np.concatenate([b, a] if label else [a, b])
      assert _contains(maker.store.tokens, in_order)
  assert checked > 50


def test_single_segment_mode(wiki_config, spm_tok):
  wiki_config.next_sentence = "none"
  maker = pipeline.make_example_maker(wiki_config, spm_tok, split="train", seed=5)
  for ex in _examples(maker, 50):
    _check_layout(ex, spm_tok, 128, pairs=False)
    assert ex["next_sentence_labels"] == -1  # no sentence task: no NSP loss, no NSP metric


def test_examples_are_pure_functions_of_seed_epoch_index(data_config, spm_tok):
  a = pipeline.make_example_maker(data_config, spm_tok, split="train", seed=7)
  b = pipeline.make_example_maker(data_config, spm_tok, split="train", seed=7)
  assert len(a) == len(b) > 100
  for epoch, index in [(0, 0), (0, 17), (3, 99)]:
    x, y = a(epoch, index), b(epoch, index)
    assert all(np.array_equal(x[k], y[k]) for k in x)
    assert x["example_ids"] == epoch * len(a) + index
  x, y = a(0, 17), a(1, 17)
  assert not all(np.array_equal(x[k], y[k]) for k in ("input_ids", "masked_lm_positions"))
  other_seed = pipeline.make_example_maker(data_config, spm_tok, split="train", seed=8)(0, 17)
  assert not np.array_equal(x["input_ids"], other_seed["input_ids"])


def test_truncate_seq_pair_matches_bert():
  rng = np.random.default_rng(0)
  for la, lb, m in [(10, 3, 8), (3, 10, 8), (6, 6, 9), (5, 2, 20), (40, 39, 10)]:
    a, b = np.arange(la), np.arange(100, 100 + lb)
    ta, tb = instances.truncate_seq_pair(a, b, m, rng)
    # reference: BERT's loop, trimming the longer side (ties: b) one token at a time
    ra, rb = la, lb
    while ra + rb > m:
      if ra > rb:
        ra -= 1
      else:
        rb -= 1
    assert (len(ta), len(tb)) == (ra, rb)
    assert _contains(a, ta) and _contains(b, tb)  # contiguous pieces of the originals


def test_mask_tokens_never_selects_specials():
  rng = np.random.default_rng(0)
  ids = np.array([2, 10, 11, 3, 12, 13, 3], np.int32)
  special = np.isin(ids, [2, 3])
  for _ in range(50):
    out, pos, orig = instances.mask_tokens(ids, special, rng, masked_lm_prob=0.5, max_predictions=3, mask_id=4,
                                           replacement_ids=np.arange(5, 20))
    assert not special[pos].any() and np.array_equal(orig, ids[pos]) and len(pos) == 2
    assert np.array_equal(out[special], ids[special])
