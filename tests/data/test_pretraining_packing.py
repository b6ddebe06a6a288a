"""Packed pretraining rows: the packer's invariants, fuller rows, exact and elastic resume."""

import numpy as np
import pytest

from mebert.data import packing, pipeline
from mebert.train import distributed

B = 4


@pytest.fixture
def packed_config(data_config):
  data_config.pack = True
  data_config.short_seq_prob = 0.9  # many short examples: rows that hold several
  data_config.pack_bins = 8
  return data_config


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(xs, ys):
  return len(xs) == len(ys) and all(
      x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(xs, ys))


def test_batch_layout_is_static_and_matches_batch_layout(packed_config, spm_tok):
  it = pipeline.make_pretraining_iterator(packed_config, spm_tok, split="train", batch_size=B, seed=0)
  spec = pipeline.batch_layout(packed_config, "train", B)
  layout = packing.pack_layout(packed_config)
  assert (layout.max_examples, layout.max_predictions) == (4, 14)  # ceil(.15 * 64) + 4 slots
  for batch in _take(it, 3):
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == spec
  unpacked = pipeline.batch_layout(packed_config, "eval", B)
  assert unpacked["next_sentence_labels"][0] == (B,) and "cls_positions" not in unpacked


def test_each_row_holds_whole_examples_each_as_made_alone(packed_config, spm_tok):
  maker = pipeline.make_example_maker(packed_config, spm_tok, split="train", seed=0)
  it = pipeline.make_pretraining_iterator(packed_config, spm_tok, split="train", batch_size=B, seed=0)
  several, seen = 0, set()
  for batch in _take(it, 12):
    for r in range(B):
      seg, pos = batch["segment_ids"][r], batch["positions"][r]
      k = int((batch["example_ids"][r] >= 0).sum())
      several += k > 1
      # Slots fill from the left; empty ones are -1 (labels, ids) and 0 ([CLS] position).
      assert (batch["example_ids"][r, k:] == -1).all() and (batch["next_sentence_labels"][r, k:] == -1).all()
      assert (batch["cls_positions"][r, k:] == 0).all()
      used = int((seg > 0).sum())
      assert (seg[:used] > 0).all() and (seg[used:] == 0).all()  # padding only at the end
      assert (batch["input_ids"][r, used:] == spm_tok.pad_id).all()
      weights = batch["masked_lm_weights"][r] > 0
      predictions = batch["masked_lm_positions"][r][weights]
      assert np.all(np.diff(predictions) > 0)
      for s in range(k):
        ex_id = int(batch["example_ids"][r, s])
        assert ex_id not in seen  # no example twice (nor split over two rows)
        seen.add(ex_id)
        alone = maker.compact(*divmod(ex_id, len(maker)))
        n = len(alone["input_ids"])
        start = int(batch["cls_positions"][r, s])
        assert (seg[start:start + n] == s + 1).sum() == n == (seg == s + 1).sum()  # segment s+1
        np.testing.assert_array_equal(pos[start:start + n], np.arange(n))  # positions restart
        assert batch["input_ids"][r, start] == spm_tok.cls_id
        np.testing.assert_array_equal(batch["input_ids"][r, start:start + n], alone["input_ids"])
        np.testing.assert_array_equal(batch["token_type_ids"][r, start:start + n], alone["token_type_ids"])
        assert batch["next_sentence_labels"][r, s] == alone["next_sentence_labels"][0]
        mine = (predictions >= start) & (predictions < start + n)
        np.testing.assert_array_equal(predictions[mine] - start, alone["masked_lm_positions"])
        np.testing.assert_array_equal(batch["masked_lm_ids"][r][weights][mine], alone["masked_lm_ids"])
      assert int(weights.sum()) == sum(
          len(maker.compact(*divmod(int(e), len(maker)))["masked_lm_positions"])
          for e in batch["example_ids"][r, :k])
  assert several >= 4  # the packing did pack


def test_packing_cuts_the_padding(packed_config, spm_tok):
  packed_config.pack_bins = 32

  def pad_fraction(pack):
    packed_config.pack = pack
    it = pipeline.make_pretraining_iterator(packed_config, spm_tok, split="train", batch_size=B, seed=0)
    return np.mean([(b["segment_ids"] == 0).mean() for b in _take(it, 12)])

  unpacked, packed = pad_fraction(False), pad_fraction(True)
  assert unpacked > 0.2 and packed < unpacked / 2.5, (unpacked, packed)


def test_packed_state_restore_resumes_exactly(packed_config, spm_tok):
  it = pipeline.make_pretraining_iterator(packed_config, spm_tok, split="train", batch_size=B, seed=0)
  _take(it, 5)  # past the first packed window of some streams, inside others
  state = it.get_state()
  expected = _take(it, 6)
  fresh = pipeline.make_pretraining_iterator(packed_config, spm_tok, split="train", batch_size=B, seed=0)
  fresh.set_state(state)
  assert _same(_take(fresh, 6), expected)


def test_process_shards_take_every_nth_row_of_the_single_process_stream(packed_config, spm_tok):
  single = pipeline.make_pretraining_iterator(packed_config, spm_tok, split="train", batch_size=2 * B, seed=5)
  shards = [pipeline.make_pretraining_iterator(packed_config, spm_tok, split="train", batch_size=B, seed=5,
                                               process_index=i, process_count=2) for i in range(2)]
  for _ in range(3):
    whole = next(single)
    for i, shard in enumerate(shards):
      part = next(shard)
      assert all(np.array_equal(part[k], whole[k][i::2]) for k in whole)


def test_resume_on_another_process_count_continues_the_same_rows(packed_config, spm_tok):
  def iterator(index, count, batch):
    return pipeline.make_pretraining_iterator(packed_config, spm_tok, split="train", batch_size=batch,
                                              seed=3, process_index=index, process_count=count)

  single = iterator(0, 1, 2 * B)
  _take(single, 3)
  expected = _take(single, 3)
  pair = [iterator(i, 2, B) for i in range(2)]
  for it in pair:
    _take(it, 3)
  saved = {i: it.get_state() for i, it in enumerate(pair)}
  resumed = iterator(0, 1, 2 * B)
  resumed.set_state(distributed.rescaled_state(saved, 1))  # the checkpoint handler's path
  assert _same(_take(resumed, 3), expected)
  with pytest.raises(ValueError, match="pack_streams=8 .* not divisible by 3 processes"):
    packing.merged_state(saved, 3)
  with pytest.raises(ValueError, match="not a complete set"):
    packing.merged_state({0: saved[0]}, 1)


def test_unpacked_state_is_refused_by_a_packed_iterator(packed_config, spm_tok):
  packed_config.pack = False
  plain = pipeline.make_pretraining_iterator(packed_config, spm_tok, split="train", batch_size=B, seed=0)
  packed_config.pack = True
  packed = pipeline.make_pretraining_iterator(packed_config, spm_tok, split="train", batch_size=B, seed=0)
  with pytest.raises(ValueError, match="not a packed stream's state .*data.pack"):
    packed.set_state(plain.get_state())


def test_eval_is_never_packed(packed_config, spm_tok):
  it = pipeline.make_pretraining_iterator(packed_config, spm_tok, split="eval", batch_size=2, seed=0)
  batch = next(it)
  assert batch["next_sentence_labels"].shape == (2,) and "cls_positions" not in batch


@pytest.mark.parametrize("key, value, message", [
    ("pack_streams", 3, "pack_streams=3 is not a multiple of the 2 processes"),
    ("pack_max_examples", -1, "pack_max_examples must be >= 1 .0 = automatic., not -1"),
    ("pack_max_predictions", 5, "pack_max_predictions=5 is below data.max_predictions_per_seq=10"),
    ("pack_bins", 0, "pack_bins must be >= 1, not 0"),
])
def test_bad_packing_keys_are_named(packed_config, spm_tok, key, value, message):
  packed_config[key] = value
  with pytest.raises(ValueError, match=message):
    pipeline.make_pretraining_iterator(packed_config, spm_tok, split="train", batch_size=B, seed=0,
                                       process_index=0, process_count=2)


def test_automatic_slots_grow_with_the_length():
  assert [packing.automatic_max_examples(n) for n in (32, 128, 512, 1024)] == [4, 4, 8, 16]


def test_automatic_prediction_budget_never_blocks_an_example():
  # bert_base phase 1 and 2 layouts, and the bound itself (prob * c + 1 per example)
  assert packing.automatic_max_predictions(128, 20, 0.15, 4) == 24
  assert packing.automatic_max_predictions(512, 80, 0.15, 3) == 80
  assert packing.automatic_max_predictions(64, 10, 0.15, 1) == 10
  rng = np.random.default_rng(0)
  for _ in range(200):
    k = int(rng.integers(1, 5))
    lengths = rng.multinomial(128 - 3 * k, np.ones(k) / k)
    need = sum(min(20, max(1, round(0.15 * c))) for c in lengths)
    assert need <= packing.automatic_max_predictions(128, 20, 0.15, 4)


def test_single_segment_mode_has_no_sentence_label(packed_config, spm_tok):
  packed_config.next_sentence = "none"
  it = pipeline.make_pretraining_iterator(packed_config, spm_tok, split="train", batch_size=B, seed=0)
  batch = next(it)
  assert (batch["next_sentence_labels"] == -1).all()  # no NSP loss on a task that is not there
  assert (batch["token_type_ids"] == 0).all()


def test_padding_report_measures_both_layouts(packed_config, spm_tok):
  from mebert.data import padding_report

  r = padding_report.padding_fractions(packed_config, spm_tok, 32, 256)
  assert r["max_predictions_per_seq"] == 5  # 10 at 64 -> 5 at 32
  assert r["unpacked_examples"] == r["unpacked_rows"] >= 256 and r["packed_examples"] >= 256
  assert 0 <= r["packed_padding"] < r["unpacked_padding"] < 1
  assert r["examples_per_packed_row"] > 1 and 0 < r["rows_saved"] < 1
