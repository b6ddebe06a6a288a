"""The benchmark harness end to end on a micro case, and the pieces it counts with."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mebert.bench import batches, cases, flops, harness, peak

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
              "mebert_useful_flop_util", "mebert_useful_flop_util_vs_best_matmul",
              "peer_tokens_per_s", "flax_peer_tokens_per_s", "ratio", "ratio_basis",
              "peak_flops_per_s", "peak_source", "best_matmul_flops_per_s", "peak_check",
              "machine", "command"):
    assert key in r, key
  assert not [k for k in r if "slot" in k]  # the old "slot utilisation" is gone
  assert (r["case"], r["batch_size"], r["seq_len"]) == ("micro", 4, 32)
  assert r["mebert_tokens_per_s"] > 0 and r["mebert_compile_s"] > 0 and r["mebert_peak_rss_mb"] > 0
  assert r["mebert_tokens_per_s"] == r["mebert_nonpad_tokens_per_s"]  # full-length rows
  # The peak is the hardware's, fixed before the run; the best product of the run stands beside it.
  assert r["peak_source"].startswith("hardware: ") and r["peak_cores"] >= 1
  assert r["peak_flops_per_s"] == pytest.approx(
      r["peak_cores"] * r["peak_clock_hz"] * r["peak_flops_per_cycle"])
  assert r["mebert_useful_flop_util"] == pytest.approx(
      r["mebert_useful_flops_per_s"] / r["peak_flops_per_s"])
  raw = r["raw"]["mebert"]
  readings = raw["matmul_readings_flops_per_s"] + [raw["matmul_flops_per_s_best_of_3"]]
  torch_raw = r["raw"]["torch"] or {}
  if torch_raw and "error" not in torch_raw:  # without torch the entry is {"error": ...}
    readings += (torch_raw["matmul_readings_flops_per_s"]
                 + [torch_raw["matmul_flops_per_s_best_of_3"]])
  assert len(raw["matmul_readings_flops_per_s"]) == 2  # before and after the one round
  assert r["best_matmul_flops_per_s"] == max(readings)  # the max, never a median
  assert r["peak_check"]["ok"] == (max(readings) <= r["peak_flops_per_s"]
                                   and r["mebert_useful_flops_per_s"] <= r["peak_flops_per_s"])
  assert r["mebert_host_tuning"] is True and r["host_tuning"] is True
  assert r["flax_peer_tokens_per_s"] is None and r["flax_peer_error"]
  assert r["machine"]["nproc"] >= 1 and r["machine"]["cpu_model"]
  if _importable("torch", "transformers"):
    assert r["peer_tokens_per_s"] > 0 and r["faster_peer"] == "pytorch"
    assert r["ratio"] == pytest.approx(r["mebert_tokens_per_s"] / r["peer_tokens_per_s"])
    assert r["peer_host_tuning"] is True  # the peer in the same environment
  else:
    assert r["peer_tokens_per_s"] is None


def test_peak_check_says_when_the_peak_is_wrong():
  record = {"peak_flops_per_s": 100e9, "best_matmul_flops_per_s": 90e9,
            "mebert_useful_flops_per_s": 80e9, "peer_useful_flops_per_s": 30e9,
            "flax_peer_useful_flops_per_s": None}
  assert harness._peak_check(record)["ok"] is True
  record["best_matmul_flops_per_s"] = 120e9
  check = harness._peak_check(record)
  assert check["ok"] is False and check["above_peak"] == ["best matrix product 120.0 GFLOP/s"]
  assert "the hardware peak is wrong" in check["note"]
  record.update(best_matmul_flops_per_s=90e9, mebert_useful_flops_per_s=101e9)  # a step above it
  assert harness._peak_check(record)["above_peak"] == ["mebert step (useful FLOPs) 101.0 GFLOP/s"]
  summary = harness.format_summary({**_summary_record(), **record,
                                    "peak_check": harness._peak_check(record)})
  assert "WARNING: the hardware peak is wrong" in summary


def _summary_record():
  r = {"case": "x", "batch_size": 1, "seq_len": 8, "steps": 2, "ratio_basis": "tokens_per_s",
       "ratio": None, "peak_source": "hardware: ..."}
  for prefix in ("mebert", "peer", "flax_peer"):
    for key in ("tokens_per_s", "nonpad_tokens_per_s", "step_time_s", "compile_s", "peak_rss_mb",
                "useful_flop_util", "useful_flop_util_vs_best_matmul"):
      r[f"{prefix}_{key}"] = None
  return r


_CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
cpu family\t: {family}
model\t\t: {model}
model name\t: {name}
cpu MHz\t\t: 2600.000
siblings\t: {siblings}
cpu cores\t: {cores}
flags\t\t: fpu sse2 avx fma avx2 {extra}

processor\t: 1
vendor_id\t: ignored
"""


@pytest.mark.parametrize("vendor,family,model,name,extra,expected", [
    ("AuthenticAMD", 25, 17, "AMD EPYC 9654", "avx512f avx512_bf16", 32),  # Zen 4: 2 x 256-bit
    ("AuthenticAMD", 25, 1, "AMD EPYC 7763", "", 32),  # Zen 3
    ("AuthenticAMD", 26, 2, "AMD EPYC 9755", "avx512f", 64),  # Zen 5: 2 x 512-bit
    ("AuthenticAMD", 23, 1, "AMD EPYC 7601", "", 16),  # Zen 1: 2 x 128-bit
    ("GenuineIntel", 6, 143, "Intel(R) Xeon(R) Platinum 8480+", "avx512f amx_tile", 64),
    ("GenuineIntel", 6, 140, "11th Gen Intel(R) Core(TM) i7-1165G7", "avx512f", 32),
    ("GenuineIntel", 6, 85, "Intel(R) Core(TM) i7-8700", "", 32),  # AVX2 + FMA
])
def test_flops_per_cycle_by_cpu(tmp_path, vendor, family, model, name, extra, expected):
  path = tmp_path / "cpuinfo"
  path.write_text(_CPUINFO.format(vendor=vendor, family=family, model=model, name=name,
                                  extra=extra, siblings=2, cores=2))
  info = peak.read_cpuinfo(str(path))
  assert info["vendor_id"] == vendor  # the first processor's fields only
  per_cycle, source = peak.flops_per_cycle(info)
  assert per_cycle == expected and name in source


def test_physical_cores_count_smt_siblings_once(tmp_path, monkeypatch):
  monkeypatch.setattr(peak.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
  info = {"siblings": "8", "cpu cores": "4"}  # 2 threads per core
  assert peak.physical_cores(info)[0] == 2
  assert peak.physical_cores({})[0] == 4
  clock, source = peak.max_clock_hz({"cpu MHz": "2596.1", "flags": "fma hypervisor"}, cpu=10**6)
  assert clock == pytest.approx(2596.1e6) and "hypervisor" in source and "below the boost" in source
  override = peak.cpu_peak(flops_per_cycle_override=64, clock_ghz_override=3.0)
  assert override.flops_per_s == override.cores * 3.0e9 * 64 and "(given)" in override.source


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


def test_synthetic_batches_match_between_mebert_and_the_peer():
  case = cases.get_case("micro")
  mebert, peer = batches.synthetic_batches(case, 2, seed=1)
  for m, p in zip(mebert, peer):
    np.testing.assert_array_equal(m["input_ids"], p["input_ids"])
    rows = np.arange(case.batch_size)[:, None]
    np.testing.assert_array_equal(p["labels"][rows, m["masked_lm_positions"]], m["masked_lm_ids"])
    assert (p["labels"] >= 0).sum() == m["masked_lm_weights"].sum()
    assert (m["input_ids"][rows, m["masked_lm_positions"]] == batches.MASK % case.vocab_size).all()
