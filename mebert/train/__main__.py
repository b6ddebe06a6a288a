"""The one entrypoint, for every mode and every task:

  python -m mebert.train --config=CONFIG --workdir=DIR [--mode=MODE] [--config.KEY=VALUE ...]

Modes:
  train    (default) pretrain, fine-tune or distil, as the config says, through the one loop
           (mebert.train.loop); the same command resumes from the workdir's latest checkpoint,
           and SIGTERM/SIGINT save the current step and exit 0
  eval     restore a checkpoint (--step; default: fine-tuning's best, pretraining's latest) and
           print one JSON line of dev metrics; --workdir=W1,W2 evaluates an ensemble of
           fine-tuned models; --quantize=int8 evaluates int8 weights
  predict  fine-tuning and distillation workdirs: label every row of --input into --output
  compile  pretraining configs: lower and compile the train step for the configured mesh, print
           its memory and FLOPs

Config families (configs/FAMILY/NAME.py):
{families}
Overrides: --config.train.num_steps=3 --config.model.num_layers=2 ... (a mistyped key fails,
naming it).
"""

from __future__ import annotations

import json
import logging
import pathlib
import textwrap

from absl import app, flags
from ml_collections import config_flags

from mebert import host_memory

FAMILIES = {
    "pretrain": "pretraining on text (masked LM with NSP/SOP, or ELECTRA)",
    "finetune": "fine-tuning on labelled data (classification, regression, tagging)",
    "distill": "distillation of a fine-tuned teacher into a smaller student",
    "experiments": "experiment drivers (their docstrings say how to run them)",
}


def _families() -> str:
  """The config families beside the package (a checkout), one line each with its configs."""
  configs = pathlib.Path(__file__).resolve().parents[2] / "configs"
  folders = sorted(p for p in configs.glob("*") if p.is_dir()) if configs.is_dir() else []
  if not folders:
    return "  (no configs/ folder beside the package: see the repository's configs/)\n"
  lines = []
  for folder in folders:
    names = ", ".join(sorted(p.stem for p in folder.glob("*.py") if not p.name.startswith("_")))
    lines.append(textwrap.fill(f"{folder.name + '/':13s}{FAMILIES.get(folder.name, '')}: {names}",
                               98, initial_indent="  ", subsequent_indent=" " * 15))
  return "\n".join(lines) + "\n"


__doc__ = __doc__.format(families=_families())  # absl prints it for --help

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the vocabulary "
                               "(local path or gs://).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "predict", "compile"], "What to do "
                          "(see the modes above).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step for --mode=eval (default: latest; "
                             "fine-tuning: the best).")
_INPUT = flags.DEFINE_string("input", None, "--mode=predict: the file to label; --mode=eval "
                             "(fine-tuning): a labelled file to score instead of the dev set.")
_OUTPUT = flags.DEFINE_string("output", None, "--mode=predict: where to write (JSONL or TSV); "
                              "without --input, a folder for data.test_files' sets (GLUE "
                              "submission files).")
_PLATFORM = flags.DEFINE_enum("platform", None, ["cpu", "gpu", "tpu"], "Fail unless JAX runs "
                              "on this platform (the launchers set it: a GPU or TPU job that "
                              "fell back to CPU devices stops at once).")
_QUANTIZE = flags.DEFINE_enum("quantize", None, ["none", "int8"], "--mode=eval/predict: int8 = "
                              "per-channel int8 weights (mebert.compress.quantize); fine-tuning "
                              "configs: the same as --config.eval.quantize=int8.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", None, "Where compiled programs are kept between runs (default: "
    "WORKDIR/xla_cache, or JAX_COMPILATION_CACHE_DIR when set); a directory to share among runs, "
    "or none. See mebert.train.compile_cache.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  host_memory.configure()  # before JAX starts: the opt-in host tuning (mebert/host_memory.py)
  from mebert.train import compile_cache, distributed, platform_check, trainer  # jax starts later

  distributed.initialize_from_environment()
  platform_check.check(_PLATFORM.value)
  compile_cache.enable(_COMPILATION_CACHE.value, _WORKDIR.value.split(",")[0])
  config = _CONFIG.value
  quantize = _QUANTIZE.value
  if quantize not in (None, "none") and _MODE.value not in ("eval", "predict"):
    raise ValueError(f"--quantize={quantize} is for --mode=eval and --mode=predict")
  if _MODE.value in ("eval", "predict"):
    config = _workdir_config(config)
  elif config is None:
    raise ValueError(f"--mode={_MODE.value} needs --config=CONFIG_FILE")
  if "task" in config and _MODE.value in ("eval", "predict"):
    # The workdir's saved config, with the command line's data files and runtime keys only.
    from mebert.tasks import finetune

    if quantize is not None:
      config.eval.quantize = quantize
    metrics = finetune.run(config, _WORKDIR.value, _MODE.value, step=_STEP.value,
                           input_path=_INPUT.value, output_path=_OUTPUT.value)
  elif "task" in config:  # fine-tuning; --workdir=W1,W2,... in eval/predict is an ensemble
    from mebert.tasks import finetune

    if quantize is not None:
      config.eval.quantize = quantize
    run_task = finetune.run
    if "distill" in config:  # distillation (mebert.compress.distill): its workdir is a student's
      from mebert.compress import distill

      run_task = distill.run
    metrics = run_task(config, _WORKDIR.value, _MODE.value, step=_STEP.value,
                       input_path=_INPUT.value, output_path=_OUTPUT.value)
  elif _MODE.value == "predict":
    raise ValueError("--mode=predict needs a fine-tuning config (one with a task section)")
  elif _MODE.value == "train":
    metrics = trainer.train_and_evaluate(config, _WORKDIR.value)
  elif _MODE.value == "eval" and quantize not in (None, "none"):
    from mebert.compress import quantize as quantize_lib

    metrics = quantize_lib.evaluate_pretraining_checkpoint(config, _WORKDIR.value, _STEP.value,
                                                           quantize)
  elif _MODE.value == "eval":
    metrics = trainer.evaluate_checkpoint(config, _WORKDIR.value, _STEP.value)
  else:
    from mebert.train import compile_report

    metrics = compile_report.compile_and_report(config, _WORKDIR.value)
  print(json.dumps(metrics, sort_keys=True), flush=True)


def _workdir_config(config):
  """--mode=eval/predict: a fine-tuned workdir's saved config (mebert.tasks.run_config), a
  pretraining workdir's when --config is not given, else the command line's."""
  from mebert.tasks import run_config
  from mebert.train import checkpoints

  workdir = _WORKDIR.value
  if config is None or "task" in config:
    overrides = config_flags.get_override_values(flags.FLAGS["config"]) if config else {}
    first = workdir.split(",")[0].split("@")[0]
    if config is not None or run_config.saved_finetune_config(first) is not None:
      return run_config.eval_config(workdir, config, overrides)
  if config is None:
    from ml_collections import config_dict

    saved = checkpoints.saved_config(workdir)
    if saved is None:
      raise ValueError(f"{workdir} has no checkpoint with a saved config: pass --config")
    return config_dict.ConfigDict(saved)
  return config


def _parse_flags(argv):
  """absl's flag parsing, with every mistake in a flag or config override (an unknown key raises
  AttributeError inside ml_collections, a wrong type a flags.Error) as one line, not a traceback."""
  try:
    return flags.FLAGS(argv)
  except SystemExit:  # absl's --help prints the usage, then exits 1: asking is no error
    if any(a.lstrip("-") in ("help", "helpshort", "helpfull", "h", "?") for a in argv[1:]):
      raise SystemExit(0) from None
    raise
  except flags.Error as e:
    raise SystemExit(f"error: {e}") from None
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    message = str(e.args[0]) if e.args else str(e)  # KeyError's str() is a repr
    message = message.replace("\\n", " ").replace("\\'", "'")
    raise SystemExit(f"error: bad --config override: {' '.join(message.split())}") from None


def run():
  try:
    app.run(main, flags_parser=_parse_flags)
  except (ValueError, OSError, RuntimeError) as e:  # bad input, failed write: one line, non-zero exit
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  run()
