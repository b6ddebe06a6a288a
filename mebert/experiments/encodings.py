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

from mebert.experiments.encodings_report import load_config_module

_RUNS = flags.DEFINE_string("runs", "runs/enc", "Folder with one workdir per variant.")
_VARIANTS = flags.DEFINE_list("variants", None, "Variants to run (default: all, in config order).")
_MULTIPLES = flags.DEFINE_list("multiples", ["2", "4"], "Eval lengths, as multiples of the "
                               "training length, besides the training length itself.")
_REPORT = flags.DEFINE_string("report", "docs", "Folder for encodings_table.md and encodings.png "
                              "('' = no report).")
_STEPS = flags.DEFINE_integer("num_steps", None, "Override train.num_steps (smoke runs).")

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


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
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
  if _REPORT.value:
    from mebert.experiments import encodings_report  # pylint: disable=g-import-not-at-top

    encodings_report.write_report(runs, pathlib.Path(_REPORT.value), variants=variants)


if __name__ == "__main__":
  app.run(main)
