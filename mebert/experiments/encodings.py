"""The encodings ablation end to end: train every variant, evaluate it at 1x, 2x and 4x the training
length, then write the table and the plot (mebert.experiments.encodings_report).

  python -m mebert.experiments.encodings --runs=runs/enc --report=docs

It runs, in one process, what these commands do (VARIANT from configs/experiments/encodings.py,
L = 128 and 256). The learned run trains the vocabulary in its workdir; every other run reuses it:

  python -m mebert.train --config=configs/experiments/encodings.py:learned --workdir=runs/enc/learned
  python -m mebert.train --config=configs/experiments/encodings.py:VARIANT --workdir=runs/enc/VARIANT \
      --config.data.vocab=runs/enc/learned/vocab/spm.model
  python -m mebert.train --config=configs/experiments/encodings.py:VARIANT --workdir=runs/enc/VARIANT \
      --config.data.vocab=runs/enc/learned/vocab/spm.model --mode=eval --config.data.seq_len=L
  python -m mebert.experiments.encodings_report --runs=runs/enc --out=docs

Finished steps are skipped, so the same command again resumes an interrupted ablation. A variant
that cannot run at a length (the learned table beyond its rows) gets eval_len<L>_error.json with the
reason instead of metrics; the report shows n/a.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time

from absl import app, flags

from mebert import host_memory
from mebert.experiments.encodings_report import load_config_module

_RUNS = flags.DEFINE_string("runs", "runs/enc", "Folder with one workdir per variant.")
_VARIANTS = flags.DEFINE_list("variants", None, "Variants to run (default: all, in config order).")
_MULTIPLES = flags.DEFINE_list("multiples", ["2", "4"], "Eval lengths, as multiples of the "
                               "training length, besides the training length itself.")
_REPORT = flags.DEFINE_string("report", "docs", "Folder for encodings_table.md and encodings.png "
                              "('' = no report).")
_STEPS = flags.DEFINE_integer("num_steps", None, "Override train.num_steps (smoke runs).")
_TIME_ROUNDS = flags.DEFINE_integer("time_rounds", 3, "Rounds of the step-time measurement (0 = "
                                    "none): every variant's train step, in turn, on one batch.")
_TIME_STEPS = flags.DEFINE_integer("time_steps", 10, "Timed steps per variant per round.")

log = logging.getLogger("mebert.experiments.encodings")


def variant_config(module, variant: str, vocab: str, num_steps: int | None = None):
  config = module.get_config(variant)
  config.data.vocab = vocab
  if num_steps:
    config.train.num_steps = num_steps
    config.train.warmup_steps = min(int(config.train.warmup_steps), num_steps)
    config.checkpoint.every_steps = config.eval.every_steps = num_steps
  return config


def run_variant(module, variant: str, runs: pathlib.Path, vocab: str, multiples: list[int],
                num_steps: int | None = None) -> None:
  from mebert.train import trainer  # pylint: disable=g-import-not-at-top  (after flags)

  workdir = runs / variant
  config = variant_config(module, variant, vocab, num_steps)
  steps = int(config.train.num_steps)
  if not (workdir / f"eval_step_{steps}.json").exists():
    start = time.perf_counter()
    trainer.train_and_evaluate(config, str(workdir))
    log.info("%s: trained %d steps in %.0f s", variant, steps, time.perf_counter() - start)
  base = int(config.data.seq_len)
  for multiple in multiples:
    length = base * multiple
    done = workdir / f"eval_step_{steps}_len{length}.json"
    error = workdir / f"eval_len{length}_error.json"
    if done.exists() or error.exists():
      continue
    config.data.seq_len = length  # max_predictions_per_seq follows (a reference in the config)
    try:
      metrics = trainer.evaluate_checkpoint(config, str(workdir), steps)
      log.info("%s at length %d: mlm_accuracy %.4f", variant, length, metrics["mlm_accuracy"])
    except ValueError as e:
      log.warning("%s at length %d: %s", variant, length, e)
      error.write_text(json.dumps({"seq_len": length, "error": str(e)}, indent=2) + "\n")
    finally:
      config.data.seq_len = base


def time_steps(module, variants: list[str], runs: pathlib.Path, vocab: str, rounds: int,
               steps_per_round: int) -> dict[str, dict]:
  """Train step time of every variant, measured side by side: compiled first, then `rounds` rounds
  that each run every variant's step `steps_per_round` times on one real batch. Interleaving keeps
  a change of machine load (other work on the cores) from landing on one variant only; the log
  windows of the training runs are not comparable for that reason. Writes <run>/step_time.json."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from mebert.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from mebert.train import trainer  # pylint: disable=g-import-not-at-top

  setups = {}
  for variant in variants:
    exp = trainer.Experiment(variant_config(module, variant, vocab), str(runs / variant))
    iterator = exp.data_iterator("train")
    batch = mesh_lib.global_batch(trainer._model_batch(next(iterator)), exp.mesh)  # pylint: disable=protected-access
    trainer._close(iterator)  # pylint: disable=protected-access
    step = exp.jitted_train_step()
    with exp.sharding_context():
      state, metrics = step(exp.init_state(), batch)  # compiles
      jax.block_until_ready(metrics)
    setups[variant] = [exp, step, state, batch]
  times = {v: [] for v in variants}
  for _ in range(rounds):
    for variant in variants:
      exp, step, state, batch = setups[variant]
      with exp.sharding_context():
        for _ in range(steps_per_round):
          start = time.perf_counter()
          state, metrics = step(state, batch)
          jax.block_until_ready(metrics)
          times[variant].append(time.perf_counter() - start)
      setups[variant][2] = state
  results = {}
  for variant in variants:
    exp, t = setups[variant][0], np.asarray(times[variant]) * 1000.0
    results[variant] = {"median_ms": float(np.median(t)), "min_ms": float(t.min()),
                        "steps": int(t.size), "rounds": rounds, "batch_size": exp.batch_size,
                        "seq_len": int(exp.config.data.seq_len)}
    (runs / variant / "step_time.json").write_text(json.dumps(results[variant], indent=2) + "\n")
    log.info("%s: %.1f ms per train step (median of %d)", variant, results[variant]["median_ms"], t.size)
  return results


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  host_memory.configure()  # before JAX starts: the opt-in host tuning (mebert/host_memory.py)
  from mebert.data.tokenizer import ensure_tokenizer  # pylint: disable=g-import-not-at-top

  module = load_config_module()
  variants = _VARIANTS.value or list(module.VARIANTS)
  unknown = sorted(set(variants) - set(module.VARIANTS))
  if unknown:
    raise SystemExit(f"error: unknown variant(s) {unknown}; known: {', '.join(module.VARIANTS)}")
  runs = pathlib.Path(_RUNS.value)
  # One vocabulary for all: trained where the learned run (BERT) would train its own.
  ensure_tokenizer(module.get_config("learned").data, str(runs / "learned"))
  vocab = str(runs / "learned" / "vocab" / "spm.model")
  multiples = [int(m) for m in _MULTIPLES.value]
  for variant in variants:
    run_variant(module, variant, runs, vocab, multiples, _STEPS.value)
  if _TIME_ROUNDS.value > 0:
    time_steps(module, variants, runs, vocab, _TIME_ROUNDS.value, _TIME_STEPS.value)
  if _REPORT.value:
    from mebert.experiments import encodings_report  # pylint: disable=g-import-not-at-top

    encodings_report.write_report(runs, pathlib.Path(_REPORT.value), variants=variants)


if __name__ == "__main__":
  app.run(main)
