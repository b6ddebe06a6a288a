"""Many processes, end to end through launch/local.sh: two processes with two CPU devices each
pretrain the tiny model with checkpoints; the checkpoint then resumes on one process with four
devices and on four processes with one device each. The restored parameters are the saved ones,
both continuations train identically, and the example stream over the whole run is exactly the
uninterrupted single-process stream: no example repeated or skipped (counted by example_ids)."""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

import parallel_helpers as H

OVERRIDES = {
    "model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2,
    "model.intermediate_size": 64, "model.max_position_embeddings": 32,
    "data.vocab_size": 400, "data.seq_len": 32, "data.max_predictions_per_seq": 5,
    "train.batch_size": 8, "train.warmup_steps": 2, "train.log_every": 1,
    "checkpoint.every_steps": 2, "eval.every_steps": 1000, "eval.num_batches": 1,
    "eval.batch_size": 8,
}
SAVED_AT, FINAL = 4, 8


def _config(**extra):
  config = H.load_config("tiny")
  for key, value in {**OVERRIDES, **extra}.items():
    section, name = key.split(".")
    config[section][name] = value
  return config


def _launch(num_processes: int, workdir, num_steps: int, mesh: tuple[int, int, int]):
  flags = ["--config=configs/pretrain/tiny.py", f"--workdir={workdir}",
           f"--config.train.num_steps={num_steps}"]
  flags += [f"--config.mesh.{axis}={size}" for axis, size in zip(("data", "fsdp", "tensor"), mesh)]
  flags += [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  env = dict(os.environ, PYTHON=sys.executable, MEBERT_TOTAL_CPU_DEVICES="4", QUIET="1",
             MEBERT_RECORD_EXAMPLE_IDS="1", LOG_DIR=str(workdir / "logs" / f"n{num_processes}"))
  out = subprocess.run(["bash", str(H.REPO / "launch" / "local.sh"), str(num_processes), *flags],
                       cwd=H.REPO, env=env, capture_output=True, text=True, timeout=1200)
  # Whole logs: a resume is logged near the start, and the progress lines after it are long.
  logs = [p.read_text() for p in sorted((workdir / "logs").rglob("*.log"))]
  tails = "\n".join(log[-3000:] for log in logs)
  assert out.returncode == 0, f"{out.stdout[-2000:]}\n{out.stderr[-2000:]}\n{tails}"
  return "\n".join(logs)


def _train_metrics(workdir) -> dict[int, dict]:
  import json

  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r for r in records if r["split"] == "train"}


def _expected_stream(workdir, num_steps: int) -> dict[int, list[int]]:
  """example_ids of each global batch of one uninterrupted single-process run."""
  from mebert.data.pipeline import make_pretraining_iterator
  from mebert.data.tokenizer import ensure_tokenizer

  config = _config()
  tokenizer = ensure_tokenizer(config.data, str(workdir))  # the vocabulary process 0 trained
  iterator = make_pretraining_iterator(config.data, tokenizer, split="train", batch_size=8,
                                       seed=config.seed)
  # Packed rows hold several examples (-1 in empty slots).
  return {step: sorted(int(i) for i in next(iterator)["example_ids"].ravel() if i >= 0)
          for step in range(1, num_steps + 1)}


@pytest.mark.slow
def test_two_processes_checkpoint_then_resume_on_one_and_on_four(tmp_path):
  from mebert.train import checkpoints, compile_report, distributed

  first = tmp_path / "two_by_two"
  _launch(2, first, SAVED_AT, mesh=(1, 2, 2))  # FSDP across the processes, tensor within each
  assert sorted(int(p.name) for p in (first / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]
  assert sorted(p.name for p in (first / "example_ids").iterdir()) == [
      "process_0-of-2.jsonl", "process_1-of-2.jsonl"]
  assert sorted(p.name for p in (first / "checkpoints" / "4" / "data").glob("*.json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  # Process 0 alone writes metrics and logs its progress; process 1 only warns.
  assert sorted(_train_metrics(first)) == [1, 2, 3, 4]
  process_1_log = next((first / "logs").rglob("process_1.log")).read_text()
  assert "pretrain:" not in process_1_log and "trained sentencepiece" not in process_1_log
  assert "trained sentencepiece" in next((first / "logs").rglob("process_0.log")).read_text()

  # The checkpoint restores exactly, onto another mesh on other devices (trainer's restore path).
  saved, _ = checkpoints.restore_params(str(first), SAVED_AT)
  config = _config(**{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
  exp = compile_report.experiment(config, str(first))
  step, state = checkpoints.Checkpointer(str(first)).restore_latest(exp.abstract_state, None)
  assert step == SAVED_AT and int(state.step) == SAVED_AT
  for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  saved_norm = float(optax.global_norm(saved))

  expected = _expected_stream(first, FINAL)
  all_ids = [i for ids in expected.values() for i in ids]
  assert len(set(all_ids)) == len(all_ids) == 8 * FINAL  # the stream itself has no repeats here

  resumed = {}
  for processes, mesh in ((1, (1, 4, 1)), (4, (4, 1, 1))):  # other processes, other meshes
    workdir = tmp_path / f"resumed_on_{processes}"
    shutil.copytree(first, workdir, ignore=shutil.ignore_patterns("logs"))
    logs = _launch(processes, workdir, FINAL, mesh)
    assert f"resumed from checkpoint step {SAVED_AT}" in logs
    assert "checkpoint written by 2 processes" in logs
    metrics = _train_metrics(workdir)
    assert sorted(metrics) == list(range(1, FINAL + 1))
    # The first step after the restore saw exactly the saved parameters.
    np.testing.assert_allclose(metrics[SAVED_AT + 1]["param_norm"], saved_norm, rtol=1e-6)
    # Steps 1-4 on two processes, 5-8 on `processes`: together, the uninterrupted stream.
    assert distributed.read_example_ids(str(workdir)) == expected, processes
    resumed[processes] = (metrics, checkpoints.restore_params(str(workdir), FINAL)[0])

  (metrics_1, params_1), (metrics_4, params_4) = resumed[1], resumed[4]
  for step in range(SAVED_AT + 1, FINAL + 1):
    np.testing.assert_allclose(metrics_4[step]["loss"], metrics_1[step]["loss"], atol=1e-5)
  for a, b in zip(jax.tree.leaves(params_1), jax.tree.leaves(params_4)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def _worker_pids(workdir) -> dict[int, int]:
  """process index -> pid of the `python -m mebert.train` workers of a run in `workdir`."""
  pids = {}
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      cmdline = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
      environ = open(f"/proc/{entry}/environ", "rb").read().split(b"\0")
    except OSError:
      continue
    if b"mebert.train" in cmdline and f"--workdir={workdir}".encode() in cmdline:
      for item in environ:
        if item.startswith(b"MEBERT_PROCESS_ID="):
          pids[int(item.split(b"=", 1)[1])] = int(entry)
  return pids


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_saves_the_same_step_on_both(tmp_path):
  """A preemption notice reaches one host: JAX's preemption service tells the other, both save the
  same step and exit cleanly, and the run resumes from it."""
  import json
  import signal
  import time

  workdir = tmp_path / "run"
  flags = ["--config=configs/pretrain/tiny.py", f"--workdir={workdir}",
           "--config.train.num_steps=100000", "--config.mesh.data=4"]
  flags += [f"--config.{k}={v}" for k, v in {**OVERRIDES, "checkpoint.every_steps": 1000}.items()]
  env = dict(os.environ, PYTHON=sys.executable, MEBERT_TOTAL_CPU_DEVICES="4", QUIET="1",
             LOG_DIR=str(workdir / "logs"))
  launcher = subprocess.Popen(["bash", str(H.REPO / "launch" / "local.sh"), "2", *flags],
                              cwd=H.REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 600
    while time.time() < deadline:
      metrics = workdir / "metrics.jsonl"
      if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
        break
      assert launcher.poll() is None, "the run ended before it could be preempted"
      time.sleep(0.5)
    pids = _worker_pids(workdir)
    assert sorted(pids) == [0, 1], pids
    os.kill(pids[1], signal.SIGTERM)  # process 1 only
    assert launcher.wait(timeout=300) == 0
  finally:
    if launcher.poll() is None:
      launcher.kill()
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert len(steps) == 1, steps  # every_steps=1000: this is the preemption save
  saved = steps[0]
  logs = {p.name: p.read_text() for p in (workdir / "logs").glob("*.log")}
  assert len(logs) == 2 and all(f"saved step {saved}, exiting" in text for text in logs.values()), \
      {name: text[-1500:] for name, text in logs.items()}
  written = [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert max(written) == saved
  _launch(2, workdir, saved + 2, (4, 1, 1))  # resumes from the preemption checkpoint
  assert max(_train_metrics(workdir)) == saved + 2
