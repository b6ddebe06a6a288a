"""The config that --mode=eval and --mode=predict run with: the workdir's saved one.

A fine-tuned workdir carries its task, columns, labels, lengths and tokenizer in the config saved
with its checkpoints, so eval and predict need nothing but the workdir:

  python -m mebert.train --workdir=runs/mine --mode=eval [--input=new.tsv]
  python -m mebert.train --workdir=runs/mine --mode=predict --input=new.tsv --output=labels.tsv

A --config given beside it may change only the data files and the runtime keys below; any other
key it overrides on the command line is an error that names the key (silently predicting with
other columns or lengths than the model was trained with is the mistake this prevents).
"""

from __future__ import annotations

import logging

from ml_collections import config_dict

from mebert.tasks.defaults import finetune_defaults
from mebert.train import checkpoints

log = logging.getLogger(__name__)

# Where the examples are (files, formats): a new file to evaluate or label, or another held-out
# slice of the training file (data.holdout_offset: a selection split scored apart from the report
# split, as mebert.bench.finetune_compare --selection=split does).
DATA_FILE_KEYS = ("data.train_files", "data.eval_files", "data.extra_eval", "data.test_files",
                  "data.id_column", "data.tfds_data_dir", "data.format", "data.header",
                  "data.conll_word_column", "data.conll_tag_column", "data.max_eval_examples",
                  "data.holdout_offset")
# How the run uses the machine (never what it computes): batch sizes, mesh, numerics, padding.
RUNTIME_PREFIXES = ("eval.", "mesh.", "data.buckets", "data.device_prefetch", "model.dtype",
                    "model.attention_backend", "model.remat_policy")


def allowed(key: str) -> bool:
  return key in DATA_FILE_KEYS or any(key == p or key.startswith(p) for p in RUNTIME_PREFIXES)


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _set(c, key: str, value) -> None:
  *sections, name = key.split(".")
  for s in sections:
    c = c[s]
  with c.ignore_type():
    c[name] = value


def saved_finetune_config(workdir: str) -> dict | None:
  """The config saved with the workdir's latest checkpoint, if it is a fine-tuned model's."""
  saved = checkpoints.saved_config(workdir)
  if not saved or not isinstance(saved.get("task"), dict):
    return None
  return saved


def eval_config(workdir: str, command_line=None, overrides: dict | None = None):
  """The saved config of `workdir` (its first entry for an ensemble), on every key of
  finetune_defaults (a workdir from an older version lacks the newer keys), with the command
  line's data files and runtime keys. `command_line` is the --config given (or None);
  `overrides` its --config.KEY=VALUE flags."""
  first = workdir.split(",")[0].rpartition("@")[0] if "@" in workdir.split(",")[0] else (
      workdir.split(",")[0])
  saved = saved_finetune_config(first)
  if saved is None:
    if command_line is None:
      raise ValueError(f"{first} has no fine-tuned checkpoint with a saved config: pass the "
                       "--config it was trained with")
    return command_line  # e.g. a workdir from before configs were saved: the command line decides
  c = finetune_defaults()
  for key, value in _flatten(saved).items():
    if _has(c, key):
      _set(c, key, tuple(value) if isinstance(value, list) else value)
  for section in saved:  # sections finetune_defaults lacks (distill) travel as they were saved
    if section not in c:
      with c.unlocked():
        c[section] = config_dict.ConfigDict(saved[section]) if isinstance(
            saved[section], dict) else saved[section]
  if command_line is None:
    return c
  defaults = _flatten(finetune_defaults().to_dict())
  given = _flatten(command_line.to_dict())
  saved_flat = _flatten(saved)
  for key, value in (overrides or {}).items():
    if not allowed(key) and _norm(saved_flat.get(key, defaults.get(key))) != _norm(value):
      raise ValueError(
          f"--config.{key}={value!r}: eval and predict take {key} from {first}'s saved config "
          f"({saved_flat.get(key, defaults.get(key))!r}); only data files and runtime keys may "
          f"change ({', '.join(DATA_FILE_KEYS)}, {', '.join(p + '*' if p.endswith('.') else p for p in RUNTIME_PREFIXES)})")
  taken = []
  for key, value in given.items():  # the config file's data (its argument) and the overrides
    if allowed(key) and (key in (overrides or {}) or _norm(value) != _norm(defaults.get(key))):
      if _norm(value) != _norm(_flatten(c.to_dict()).get(key)):
        _set(c, key, value)
        taken.append(f"{key}={value!r}")
  if taken:
    log.info("%s: saved config with %s", first, ", ".join(taken))
  return c


def _has(c, key: str) -> bool:
  for part in key.split("."):
    if not isinstance(c, config_dict.ConfigDict) or part not in c:
      return False
    c = c[part]
  return True


def _norm(value):
  return tuple(value) if isinstance(value, list) else value


# What a distilled student reads from its teacher's workdir when its own config names no data:
# the files, the split and the columns, so both are scored on the same examples.
INHERITED_DATA_KEYS = DATA_FILE_KEYS + (
    "data.holdout_fraction", "data.holdout_offset", "data.holdout_group", "task.text_column",
    "task.text_pair_column", "task.label_column", "task.positive_label", "task.glue")


def with_data_of(config, workdir: str):
  """A copy of config with the data keys of `workdir`'s saved fine-tuning config."""
  saved = saved_finetune_config(workdir)
  if saved is None:
    raise ValueError(f"data.train_files is empty and {workdir} has no saved fine-tuning config to "
                     "take the data from: set --config.data.train_files")
  flat = _flatten(saved)
  c = config_dict.ConfigDict(config.to_dict())
  for key in INHERITED_DATA_KEYS:
    if key in flat:
      _set(c, key, flat[key])
  log.info("data of %s: %s", workdir, {k: flat[k] for k in INHERITED_DATA_KEYS if k in flat})
  return c
