"""mebert's side of the time-to-quality benchmark: `python -m mebert.train`, the path users run,
with the recipe's config and the benchmark's overrides, stopped at the time budget.

Its clock is read from the run's own metrics.jsonl: every log step records steps_per_s over the
window since the previous one, so the training time at step s is the sum of those windows up to
s. The first window starts when the loop starts (after the tokenizer, the data and the initial
state are ready) and so counts the train step's compilation, which a user waits for too; the
windows also count the asynchronous checkpoint saves. In-training evaluation is switched off
(the benchmark evaluates the saved checkpoints afterwards). When the clock passes the budget the
run gets SIGTERM, which mebert's loop answers by saving the current step and exiting 0; that
last step's time is the last logged time plus its few steps at the last window's rate.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

NO_EVAL = 10**9  # eval.every_steps that never comes


def command(config_path: str, workdir: str, overrides: dict) -> list[str]:
  """The `python -m mebert.train` command line with --config.KEY=VALUE overrides."""
  return ([sys.executable, "-m", "mebert.train", f"--config={config_path}", f"--workdir={workdir}",
           "--compilation_cache=none"]
          + [f"--config.{k}={v}" for k, v in overrides.items()])


def read_windows(metrics_path: str) -> list[tuple[int, float]]:
  """(step, training seconds up to it) at each logged train step of metrics.jsonl."""
  out, last_step, total = [], 0, 0.0
  if not os.path.exists(metrics_path):
    return out
  with open(metrics_path, encoding="utf-8") as f:
    for line in f:
      if not line.endswith("\n"):
        break  # a line still being written
      record = json.loads(line)
      if record.get("split") != "train" or "steps_per_s" not in record:
        continue
      step = int(record["step"])
      total += (step - last_step) / float(record["steps_per_s"])
      out.append((step, total))
      last_step = step
  return out


def time_at(windows: list[tuple[int, float]], step: int) -> tuple[float, bool]:
  """(training seconds at `step`, whether estimated): exact at a log step, else the last logged
  time plus the remaining steps at the last window's rate."""
  before = [(s, t) for s, t in windows if s <= step]
  if not before:
    raise ValueError(f"no logged step at or before step {step}")
  s, t = before[-1]
  if s == step:
    return t, False
  k = len(before)
  prev_s, prev_t = windows[k - 2] if k >= 2 else (0, 0.0)
  rate = (s - prev_s) / max(t - prev_t, 1e-9)
  return t + (step - s) / rate, True


def checkpoint_steps(workdir: str) -> list[int]:
  folder = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(folder):
    return []
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


def run(cmd: list[str], workdir: str, budget_s: float, log_path: str, cwd: str,
        env: dict | None = None, poll_s: float = 0.5) -> dict:
  """Runs mebert's trainer alone, SIGTERM at the budget; returns its steps and checkpoints with
  their training times (and what stopped it)."""
  metrics = os.path.join(workdir, "metrics.jsonl")
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  with open(log_path, "w", encoding="utf-8") as log:
    log.write(" ".join(shlex.quote(c) for c in cmd) + "\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    stopped_by = "num_steps"
    while proc.poll() is None:
      time.sleep(poll_s)
      windows = read_windows(metrics)
      if windows and windows[-1][1] >= budget_s and stopped_by != "budget":
        stopped_by = "budget"
        proc.send_signal(signal.SIGTERM)  # mebert saves the current step and exits 0
    if proc.returncode != 0:
      with open(log_path, encoding="utf-8") as f:
        tail = f.read().strip().splitlines()[-10:]
      raise RuntimeError(f"mebert's run failed (exit {proc.returncode}); {log_path}:\n  "
                         + "\n  ".join(tail))
  windows = read_windows(metrics)
  points = []
  for step in checkpoint_steps(workdir):
    train_s, estimated = time_at(windows, step)
    points.append({"step": step, "train_s": train_s, "estimated": estimated})
  first_step, first_s = windows[0]
  rate = _steady_rate(windows)
  return {"framework": "mebert", "steps": points[-1]["step"] if points else 0,
          "train_s": points[-1]["train_s"] if points else 0.0, "checkpoints": points,
          "stopped_by": stopped_by, "steps_per_s": rate,
          "first_window_excess_s": first_s - first_step / rate if rate else None}


def _steady_rate(windows: list[tuple[int, float]]) -> float | None:
  """Steps per second after the first window (which holds the compilation)."""
  if len(windows) < 2:
    return None
  (s0, t0), (s1, t1) = windows[0], windows[-1]
  return (s1 - s0) / max(t1 - t0, 1e-9)


def calibrate(cmd: list[str], workdir: str, log_path: str, cwd: str, env: dict | None = None):
  """(steady steps/s, seconds of start-up in the first window) of a short run of `cmd`."""
  result = run(cmd, workdir, float("inf"), log_path, cwd, env)
  if result["steps_per_s"] is None:
    raise RuntimeError(f"mebert's calibration run logged fewer than two windows: {log_path}")
  return result["steps_per_s"], max(0.0, result["first_window_excess_s"])
