"""Benchmark harness: mebert's training step against Hugging Face BERT in PyTorch and in Flax.

  python -m mebert.bench --case=mini-128 --json=mini-128.json [--steps=20 --warmup=3 --rounds=4]
      [--flax-python=/path/to/venv/bin/python] [--model-override attention_backend=dot_product]

One run times, on the same machine, config and batches, one after the other, each in its own
process (so peak memory and thread pools are each its own):
  mebert       mebert.train.steps.train_step, jitted and donated as the trainer does;
  torch peer   transformers' BertForPreTraining in PyTorch, fp32, AdamW, all CPU threads;
  flax peer    transformers 4.x's FlaxBertForPreTraining (a separate venv, --flax-python),
               null when not given or when it fails.
Each times `steps` steps after compilation and `warmup` warm-up steps, in `rounds` rounds; the step
time is the median round's. Reported: tokens/s (every position of the batch), non-pad tokens/s,
step and compile time, peak memory (process RSS on CPU, device peak on GPU/TPU) and FLOP
utilisation, useful and slot (see mebert.bench.flops), against the peak: on CPU the faster of JAX's
and PyTorch's measured float32 matrix-product rate (--peak-size cubed) in this same run, the median
of readings taken between each worker's timed rounds, so that the rate and the step times are read
under the same conditions and summarised alike (a best single product before timing is recorded
too); on an accelerator the chip's dense bf16 peak from a table. `ratio` is mebert over the faster peer
(tokens/s; non-pad tokens/s for text cases, where the peers pad and mebert packs).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np

from mebert.bench import batches as batches_lib
from mebert.bench import cases as cases_lib
from mebert.bench import flops as flops_lib
from mebert.bench import timing

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLAX_PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flax_peer.py")


def _run_worker(name: str, command: list[str], out_path: str, timeout: float, log) -> dict | None:
  env = dict(os.environ)
  env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  log(f"[{name}] {' '.join(shlex.quote(c) for c in command)}")
  start = time.perf_counter()
  try:
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    log(f"[{name}] timed out after {timeout:.0f} s")
    return {"error": f"timed out after {timeout:.0f} s"}
  except OSError as e:
    log(f"[{name}] could not start: {e}")
    return {"error": f"could not start: {e}"}
  if proc.returncode != 0 or not os.path.exists(out_path):
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    log(f"[{name}] failed (exit {proc.returncode}):\n  " + "\n  ".join(tail))
    return {"error": "\n".join(tail[-5:])}
  with open(out_path) as f:
    result = json.load(f)
  result["wall_s"] = time.perf_counter() - start
  log(f"[{name}] done in {result['wall_s']:.1f} s: step {result['step_time_s'] * 1e3:.1f} ms")
  return result


def _mean_useful_flops(case, batches: list[dict], who: str) -> float:
  if who == "mebert":
    values = [flops_lib.useful_flops(case.size, case.vocab_size, b["segment_ids"],
                                     b["masked_lm_weights"], b["next_sentence_labels"])
              for b in batches]
  else:
    values = [flops_lib.useful_flops(case.size, case.vocab_size, b["attention_mask"],
                                     b["labels"] >= 0, b["next_sentence_label"]) for b in batches]
  return float(np.mean(values))


def _mean_slot_flops(case, lengths: list[int]) -> float:
  return float(np.mean([flops_lib.slot_flops(case.size, case.vocab_size, case.batch_size, n)
                        for n in lengths]))


def _summarize(prefix: str, result: dict | None, tokens: float, nonpad: float, useful: float,
               slot: float, peak: float | None) -> dict:
  """Flat `<prefix>_*` keys; all null when the framework did not run."""
  ok = bool(result) and "error" not in result
  step = result["step_time_s"] if ok else None
  per_s = lambda x: x / step if ok else None
  util = lambda f: (f / step / peak) if ok and peak else None
  out = {f"{prefix}_tokens_per_s": per_s(tokens), f"{prefix}_nonpad_tokens_per_s": per_s(nonpad),
         f"{prefix}_step_time_s": step, f"{prefix}_useful_flops_per_step": useful,
         f"{prefix}_slot_flops_per_step": slot, f"{prefix}_useful_flop_util": util(useful),
         f"{prefix}_slot_flop_util": util(slot),
         f"{prefix}_useful_flops_per_s": per_s(useful)}
  for key in ("compile_s", "first_step_s", "peak_rss_mb", "device_peak_bytes"):
    out[f"{prefix}_{key}"] = result.get(key) if ok else None
  out[f"{prefix}_error"] = result.get("error") if result else "not run"
  return out


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  ap.add_argument("--case", required=True, help=f"one of {', '.join(cases_lib.CASES)}")
  ap.add_argument("--json", required=True, help="where to write the results")
  ap.add_argument("--steps", type=int, default=20, help="timed steps (after warm-up)")
  ap.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
  ap.add_argument("--rounds", type=int, default=4, help="the timed steps are split into rounds; "
                  "the median round gives the step time")
  ap.add_argument("--batch-size", type=int, default=None, help="override the case's batch size")
  ap.add_argument("--seq-len", type=int, default=None, help="override the case's sequence length")
  ap.add_argument("--peak-size", type=int, default=4096,
                  help="N of the N^3 float32 matmul that measures the CPU's peak; 0 = skip")
  ap.add_argument("--flax-python", default=os.environ.get("MEBERT_BENCH_FLAX_PYTHON"),
                  help="python of a venv with transformers<5, jax, flax, optax: runs the Flax peer")
  ap.add_argument("--flax-pad-multiple", type=int, default=32,
                  help="the Flax peer pads variable-length batches to a multiple of this")
  ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
  ap.add_argument("--only-mebert", action="store_true", help="skip both peers (A/B runs of mebert)")
  ap.add_argument("--model-override", action="append", default=[], metavar="KEY=VALUE",
                  help="a ModelConfig field for mebert only, e.g. attention_backend=dot_product")
  ap.add_argument("--text", default=batches_lib.DEFAULT_TEXT, help="WikiText-2 file (text cases)")
  ap.add_argument("--timeout", type=float, default=3600, help="seconds per framework")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--quiet", action="store_true")
  args = ap.parse_args(argv)
  log = (lambda *_: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))

  case = cases_lib.get_case(args.case, batch_size=args.batch_size, seq_len=args.seq_len)
  rounds = max(1, min(args.rounds, args.steps))
  per_round = max(1, args.steps // rounds)  # each round walks the same `per_round` batches
  overrides = dict(kv.split("=", 1) for kv in args.model_override)
  record = {"case": case.name, "batch_size": case.batch_size, "seq_len": case.seq_len,
            "max_predictions": case.max_predictions, "data": case.data, "vocab_size": case.vocab_size,
            "model": dict(case.size), "case_note": case.note, "steps": per_round * rounds,
            "warmup": args.warmup, "rounds": rounds, "distinct_batches": per_round,
            "model_overrides": overrides,
            "command": "python -m mebert.bench " + " ".join(shlex.quote(a) for a in
                                                           (argv if argv is not None else sys.argv[1:])),
            "machine_before": timing.machine()}

  with tempfile.TemporaryDirectory(prefix="mebert-bench-") as tmp:
    if case.data == "text":
      mebert_batches, peer_batches, stats = batches_lib.text_batches(case, per_round, args.seed, args.text)
      record["packing"] = stats
    else:
      mebert_batches, peer_batches = batches_lib.synthetic_batches(case, per_round, args.seed)
    batch_path = os.path.join(tmp, "batches.npz")
    batches_lib.save(batch_path, mebert_batches, peer_batches)
    spec = {"size": case.size, "vocab_size": case.vocab_size, "seq_len": case.seq_len,
            "batch_size": case.batch_size, "steps": per_round * rounds, "warmup": args.warmup,
            "rounds": rounds, "peak_size": args.peak_size, "model_overrides": overrides,
            "flax_pad_multiple": args.flax_pad_multiple}
    spec_path = os.path.join(tmp, "spec.json")
    with open(spec_path, "w") as f:
      json.dump(spec, f)

    def worker(name, command_head):
      out_path = os.path.join(tmp, f"{name}.json")
      return _run_worker(name, command_head + ["--spec", spec_path, "--batches", batch_path,
                                               "--out", out_path], out_path, args.timeout, log)

    results = {"mebert": worker("mebert", [sys.executable, "-m", "mebert.bench.worker_mebert"])}
    torch_ok = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
    if args.only_mebert or args.no_torch:
      results["torch"] = None
    elif not torch_ok:
      results["torch"] = {"error": "torch or transformers not importable"}
    else:
      results["torch"] = worker("torch", [sys.executable, "-m", "mebert.bench.worker_torch"])
    if args.only_mebert or not args.flax_python:
      results["flax"] = None if args.only_mebert else {"error": "no --flax-python given"}
    elif not os.path.exists(args.flax_python):
      results["flax"] = {"error": f"--flax-python {args.flax_python} does not exist"}
    else:
      results["flax"] = worker("flax", [args.flax_python, FLAX_PEER])

  mebert = results["mebert"] or {}
  if "error" in mebert:
    raise SystemExit(f"mebert's worker failed: {mebert['error']}")
  # The peak the utilisations divide by.
  if mebert.get("platform") == "cpu":
    rates = {"jax": mebert.get("matmul_flops_per_s"),
             "torch": (results["torch"] or {}).get("matmul_flops_per_s")}
    rates = {k: v for k, v in rates.items() if v}
    peak = max(rates.values()) if rates else None
    best_of_3 = max([r.get("matmul_flops_per_s_best_of_3") or 0.0
                     for r in (mebert, results["torch"] or {})])
    record.update(peak_flops_per_s=peak, peak_source=(
        f"float32 {args.peak_size}^3 matmul measured in this run: median of the readings taken "
        f"between each framework's timed rounds, the faster framework's (jax "
        f"{rates.get('jax', 0) / 1e9:.1f}, torch {rates.get('torch', 0) / 1e9:.1f} GFLOP/s; "
        f"best single product before timing {best_of_3 / 1e9:.1f})"),
        matmul_flops_per_s_jax=rates.get("jax"), matmul_flops_per_s_torch=rates.get("torch"),
        matmul_flops_per_s_best_of_3=best_of_3 or None)
  else:
    peak = mebert.get("accelerator_bf16_peak_flops_per_s") or mebert.get("matmul_flops_per_s")
    record.update(peak_flops_per_s=peak, peak_source=(
        f"{mebert.get('device_kind')} dense bf16 peak (table)"
        if mebert.get("accelerator_bf16_peak_flops_per_s") else "bf16 8192^3 matmul measured"))
  record["device_kind"] = mebert.get("device_kind")
  record["platform"] = mebert.get("platform")

  mebert_tokens = case.batch_size * case.seq_len
  mebert_nonpad = float(np.mean([(b["segment_ids"] != 0).sum() for b in mebert_batches]))
  record.update(_summarize(
      "mebert", mebert, mebert_tokens, mebert_nonpad,
      _mean_useful_flops(case, mebert_batches, "mebert"),
      _mean_slot_flops(case, [case.seq_len]), peak))
  peer_lengths = [b["input_ids"].shape[1] for b in peer_batches]
  peer_tokens = float(np.mean([b["input_ids"].size for b in peer_batches]))
  peer_nonpad = float(np.mean([b["attention_mask"].sum() for b in peer_batches]))
  peer_useful = _mean_useful_flops(case, peer_batches, "peer")
  record.update(_summarize("peer", results["torch"], peer_tokens, peer_nonpad, peer_useful,
                           _mean_slot_flops(case, peer_lengths), peak))
  flax = results["flax"]
  flax_lengths = (flax or {}).get("padded_lengths") or peer_lengths
  flax_tokens = float(np.mean([case.batch_size * n for n in flax_lengths]))
  record.update(_summarize("flax_peer", flax, flax_tokens, peer_nonpad, peer_useful,
                           _mean_slot_flops(case, flax_lengths), peak))
  record["raw"] = results

  basis = "nonpad_tokens_per_s" if case.data == "text" else "tokens_per_s"
  peers = {name: record[f"{name}_{basis}"] for name in ("peer", "flax_peer")
           if record[f"{name}_{basis}"]}
  record["ratio_basis"] = basis
  if peers and record[f"mebert_{basis}"]:
    faster = max(peers, key=peers.get)
    record["faster_peer"] = {"peer": "pytorch", "flax_peer": "flax"}[faster]
    record["ratio"] = record[f"mebert_{basis}"] / peers[faster]
  else:
    record["faster_peer"], record["ratio"] = None, None
  record["machine"] = timing.machine()
  timing.write_json(args.json, record)
  if not args.quiet:
    print(format_summary(record))
  return record


def format_summary(r: dict) -> str:
  def fmt(x, scale=1.0, digits=0, suffix=""):
    return "-" if x is None else f"{x * scale:,.{digits}f}{suffix}"

  lines = [f"{r['case']}: batch {r['batch_size']} x {r['seq_len']}, {r['steps']} steps; peak "
           f"{fmt(r.get('peak_flops_per_s'), 1e-9, 1)} GFLOP/s ({r.get('peak_source')})",
           f"{'':10s} {'tokens/s':>10s} {'non-pad/s':>10s} {'step ms':>9s} {'compile s':>9s} "
           f"{'RSS MB':>8s} {'useful%':>8s} {'slot%':>7s}"]
  for name, prefix in (("mebert", "mebert"), ("pytorch", "peer"), ("flax", "flax_peer")):
    lines.append(
        f"{name:10s} {fmt(r[f'{prefix}_tokens_per_s']):>10s} "
        f"{fmt(r[f'{prefix}_nonpad_tokens_per_s']):>10s} {fmt(r[f'{prefix}_step_time_s'], 1e3, 1):>9s} "
        f"{fmt(r[f'{prefix}_compile_s'], 1, 1):>9s} {fmt(r[f'{prefix}_peak_rss_mb']):>8s} "
        f"{fmt(r[f'{prefix}_useful_flop_util'], 100, 1):>8s} {fmt(r[f'{prefix}_slot_flop_util'], 100, 1):>7s}")
  lines.append(f"ratio (mebert / faster peer, {r['ratio_basis']}): {fmt(r['ratio'], 1, 2)}"
               + (f" vs {r['faster_peer']}" if r.get("faster_peer") else ""))
  return "\n".join(lines)
