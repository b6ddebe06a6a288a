"""Several seeds of one fine-tuning config: each seed's dev metrics, their mean and standard
deviation, and the ensemble of all seeds (mean probabilities) with its gain over its members.

  python -m mebert.tasks.seeds --config=configs/finetune/mrpc.py --workdir=runs/mrpc \
      --seeds=0,1,2,3,4 [--config.train.num_epochs=3 ...]

Seed s trains in WORKDIR/seed_<s> (an interrupted command resumes each seed where it stopped; a
finished seed is only re-read). Small GLUE sets vary a lot from seed to seed (MRPC, RTE): report
mean +- std, not one run. Writes WORKDIR/seeds.json and WORKDIR/seeds.md; the last stdout line is
the JSON summary.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mebert import host_memory


def define_flags():
  """Flags only when run as a program: tests import `run_seeds` beside other modules' --config."""
  config_flags.DEFINE_config_file("config", None, "Fine-tuning config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Parent directory; seed s trains in seed_<s>/.")
  flags.DEFINE_string("seeds", "0,1,2,3,4", "Comma-separated seeds.")
  flags.DEFINE_bool("ensemble", True, "Also evaluate the ensemble of all seeds.")
  flags.DEFINE_string("compilation_cache", None, "Compiled programs shared by the seeds (default: "
                      "WORKDIR/xla_cache); none turns it off. See mebert.train.compile_cache.")
  flags.mark_flags_as_required(["config", "workdir"])

SKIP = {"step", "last_step", "num_train_examples", "num_eval_examples", "steps_per_epoch",
        "wall_time_s", "eval_time_s", "gold_entities", "predicted_entities"}


def summarize(seeds: list[int], results: list[dict]) -> tuple[dict, str]:
  keys = [k for k, v in results[0].items()
          if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in SKIP
          and all(k in r for r in results)]
  stats = {}
  for k in keys:
    values = np.array([float(r[k]) for r in results])
    stats[k] = {"mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "min": float(values.min()), "max": float(values.max())}
  lines = ["| seed | best step | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
  for s, r in zip(seeds, results):
    lines.append(f"| {s} | {r.get('step')} | " + " | ".join(f"{r[k]:.4f}" for k in keys) + " |")
  lines.append(f"| mean +- std ({len(seeds)}) | | "
               + " | ".join(f"{stats[k]['mean']:.4f} +- {stats[k]['std']:.4f}" for k in keys) + " |")
  return stats, "\n".join(lines)


def run_seeds(config, workdir: str, seeds: list[int], ensemble: bool = True) -> dict:
  from mebert.tasks import finetune, inference

  if not seeds:
    raise ValueError("--seeds is empty")
  workdirs, results = [], []
  for s in seeds:
    config.seed = int(s)
    w = os.path.join(workdir, f"seed_{s}")
    done = os.path.join(w, "eval_results.json")
    if os.path.isfile(done):  # finished earlier: the command is re-runnable
      with open(done) as f:
        results.append(json.load(f))
    else:
      results.append(finetune.train_and_evaluate(config, w))
    workdirs.append(w)
  stats, table = summarize(seeds, results)
  summary = {"seeds": list(seeds), "metrics": stats, "runs": results, "seed_table": table}
  if ensemble and len(seeds) > 1:
    ens = inference.evaluate(config, workdirs)
    summary["ensemble"] = {k: v for k, v in ens.items() if k not in ("members", "table")}
    summary["ensemble_table"] = ens["table"]
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "seeds.json"), "w") as f:
    json.dump(summary, f, indent=2, sort_keys=True)
  with open(os.path.join(workdir, "seeds.md"), "w") as f:
    f.write(f"## {len(seeds)} seeds\n\n{table}\n")
    if "ensemble_table" in summary:
      f.write(f"\n## Ensemble of the {len(seeds)} seeds\n\n{summary['ensemble_table']}\n")
  logging.info("seeds:\n%s%s", table,
               f"\nensemble:\n{summary['ensemble_table']}" if "ensemble_table" in summary else "")
  return summary


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  host_memory.configure()  # before JAX starts: the opt-in host tuning (mebert/host_memory.py)
  f = flags.FLAGS
  seeds = [int(s) for s in f.seeds.split(",") if s.strip()]
  from mebert.train import compile_cache  # after flags: jax must not start before parsing

  compile_cache.enable(f.compilation_cache, f.workdir)  # seeds 1.. reuse seed 0's compiles
  summary = run_seeds(f.config, f.workdir, seeds, f.ensemble)
  print(json.dumps({k: v for k, v in summary.items() if k not in ("runs",)}, sort_keys=True),
        flush=True)


def run():
  define_flags()
  try:
    app.run(main)
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  run()
