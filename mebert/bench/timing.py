"""Timing, memory and machine helpers shared by every benchmark worker.

Standard library only (plus whatever framework the caller passes in), so that the Flax peer, which
runs in a separate virtual environment without mebert installed, can import this file by path.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable


def timed_rounds(run_steps: Callable[[int], None], *, steps: int, rounds: int,
                 between_rounds: Callable[[], float] | None = None) -> dict:
  """Runs `steps` steps split into `rounds` equal rounds, each timed from dispatch to completion.

  `run_steps(n)` must run n steps and return only once they have finished (JAX: block on the
  state; PyTorch: eager, already done). Steps inside a round are not synchronised one by one, so
  asynchronous dispatch overlaps host work with compute as it does in training. The step time is
  the median over rounds of round_time / steps_per_round: on a shared machine the median shrugs off
  a round that another process slowed down.

  `between_rounds`, when given, is called before the first round and after every round (untimed);
  its readings come back as `between_rounds_readings`, e.g. the matrix-product rate, read at the
  same times as the steps (the machine's speed drifts by several percent over a minute); the
  harness reports their best beside the hardware peak (mebert/bench/peak.py).
  """
  rounds = max(1, min(rounds, steps))
  per_round = max(1, steps // rounds)
  times, readings = [], []
  for _ in range(rounds):
    if between_rounds is not None:
      readings.append(between_rounds())
    start = time.perf_counter()
    run_steps(per_round)
    times.append((time.perf_counter() - start) / per_round)
  if between_rounds is not None:
    readings.append(between_rounds())
  out = {"step_time_s": statistics.median(times), "step_time_mean_s": statistics.fmean(times),
         "step_time_min_s": min(times), "round_step_times_s": times,
         "steps_timed": per_round * rounds}
  if readings:
    out["between_rounds_readings"] = readings
  return out


def product_rate(run_product: Callable[[], object], flops: float, repeats: int,
                 best: bool = False) -> float:
  """FLOP/s of `repeats` back-to-back calls of `run_product` (each returns once its product is
  done): over their mean time, or over the fastest one when best=True."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run_product()
    times.append(time.perf_counter() - start)
  return flops / (min(times) if best else sum(times) / len(times))


def peak_rss_mb() -> float:
  """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
  kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return kib / 1024.0 if sys.platform != "darwin" else kib / 2**20


def current_rss_mb() -> float:
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
  except OSError:
    return float("nan")


def machine() -> dict:
  """Where the numbers came from: CPU model and count, load, OS, Python, date."""
  cpu_model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu_model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  try:
    load = list(os.getloadavg())
  except OSError:
    load = None
  try:
    uptime = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    uptime = None
  return {"nproc": os.cpu_count(), "cpu_model": cpu_model, "load_average": load, "uptime": uptime,
          "platform": platform.platform(), "python": platform.python_version(),
          "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def write_json(path: str, record: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(record, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def host_tuning(jax_dispatch: bool = True) -> bool:
  """mebert's opt-in host tuning (mebert/host_memory.py) for this worker, loaded by path so that the
  Flax peer's venv, without mebert installed, gets exactly the same; MEBERT_GLIBC_TUNING=0 (the
  harness's --no-host-tuning) turns it off for every framework alike."""
  import importlib.util

  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "host_memory.py")
  spec = importlib.util.spec_from_file_location("mebert_host_memory", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.configure(jax_dispatch=jax_dispatch)


def worker_main(run: Callable[[dict, str], dict], description: str, argv=None,
                jax_dispatch: bool = True) -> None:
  """The command line every worker shares: --spec=SPEC.json --batches=B.npz --out=OUT.json.

  Applies the host tuning first (jax_dispatch=False: glibc only, for a worker without JAX) and
  records whether it took in the output as `host_tuning`."""
  import argparse

  ap = argparse.ArgumentParser(description=description)
  ap.add_argument("--spec", required=True)
  ap.add_argument("--batches", required=True)
  ap.add_argument("--out", required=True)
  args = ap.parse_args(argv)
  tuned = host_tuning(jax_dispatch)  # host_memory.configure(), before the framework starts
  with open(args.spec) as f:
    spec = json.load(f)
  write_json(args.out, {**run(spec, args.batches), "host_tuning": tuned})
