"""The nine GLUE tasks: where their data is (a GLUE folder or TFDS's glue/*), their columns, labels,
metric, and the benchmark's submission files.

A config takes its data from its argument (configs/finetune/TASK.py:ARG):
  ARG = a folder as GLUE's download script lays it out (train.tsv, dev.tsv, test.tsv; MNLI's
        dev_matched.tsv, test_mismatched.tsv, ...): dev.tsv is the evaluation set, as GLUE means
        it; without one a part of train.tsv is held out;
  ARG = "tfds": TFDS's glue/NAME, prepared as array_record (README, "Data from TFDS");
  no ARG: the data.* keys (--config.data.train_files=... [--config.data.eval_files=...]).
Submission files (GLUE's names, "index<TAB>prediction" rows, labels as GLUE writes them: 0/1,
entailment/not_entailment, floats for STS-B) come from --mode=predict without --input.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from etils import epath
from ml_collections import config_dict


@dataclasses.dataclass(frozen=True)
class GlueTask:
  name: str  # GLUE's folder and submission file name
  tfds: str
  kind: str
  columns: tuple[str, str, str]  # text, pair, label in GLUE's TSVs (CoLA: indices, no header)
  tfds_columns: tuple[str, str, str]
  labels: tuple[str, ...]  # as GLUE's TSVs and submissions write them, in TFDS's class order
  tfds_labels: tuple[str, ...]  # TFDS's class names
  metric: str  # the benchmark's (the early-stopping metric)
  dev: tuple[str, str] = ("dev.tsv", "validation")  # the evaluation set: file, TFDS split
  # (name, file, TFDS split) of further labelled sets (MNLI's mismatched dev).
  extra_dev: tuple[tuple[str, str, str], ...] = ()
  # (submission name, file, TFDS split) of the unlabelled test sets.
  test: tuple[tuple[str, str, str], ...] = ()
  header: bool = True
  test_columns: tuple[str, str] | None = None  # text, pair in test.tsv when they differ
  id_column: str = "index"


_NLI2 = ("entailment", "not_entailment")
TASKS = {t.name: t for t in (
    GlueTask("CoLA", "glue/cola", "classification", ("3", "", "1"), ("sentence", "", "label"),
             ("0", "1"), ("unacceptable", "acceptable"), "mcc", header=False,
             test_columns=("sentence", "")),
    GlueTask("SST-2", "glue/sst2", "classification", ("sentence", "", "label"),
             ("sentence", "", "label"), ("0", "1"), ("negative", "positive"), "accuracy"),
    GlueTask("MRPC", "glue/mrpc", "classification", ("#1 String", "#2 String", "Quality"),
             ("sentence1", "sentence2", "label"), ("0", "1"), ("not_equivalent", "equivalent"), "f1"),
    GlueTask("STS-B", "glue/stsb", "regression", ("sentence1", "sentence2", "score"),
             ("sentence1", "sentence2", "label"), (), (), "pearson"),
    GlueTask("QQP", "glue/qqp", "classification", ("question1", "question2", "is_duplicate"),
             ("question1", "question2", "label"), ("0", "1"), ("not_duplicate", "duplicate"), "f1",
             id_column="id"),
    GlueTask("MNLI", "glue/mnli", "classification", ("sentence1", "sentence2", "gold_label"),
             ("premise", "hypothesis", "label"), ("entailment", "neutral", "contradiction"),
             ("entailment", "neutral", "contradiction"), "accuracy",
             dev=("dev_matched.tsv", "validation_matched"),
             extra_dev=(("mismatched", "dev_mismatched.tsv", "validation_mismatched"),),
             test=(("MNLI-m", "test_matched.tsv", "test_matched"),
                   ("MNLI-mm", "test_mismatched.tsv", "test_mismatched"))),
    GlueTask("QNLI", "glue/qnli", "classification", ("question", "sentence", "label"),
             ("question", "sentence", "label"), _NLI2, _NLI2, "accuracy"),
    GlueTask("RTE", "glue/rte", "classification", ("sentence1", "sentence2", "label"),
             ("sentence1", "sentence2", "label"), _NLI2, _NLI2, "accuracy"),
    GlueTask("WNLI", "glue/wnli", "classification", ("sentence1", "sentence2", "label"),
             ("sentence1", "sentence2", "label"), ("0", "1"), ("not_entailment", "entailment"),
             "accuracy"),
)}


def task(name: str) -> GlueTask:
  if name not in TASKS:
    raise ValueError(f"task.glue={name!r} is not a GLUE task ({', '.join(TASKS)})")
  return TASKS[name]


def _tests(t: GlueTask) -> tuple[tuple[str, str, str], ...]:
  return t.test or ((t.name, "test.tsv", "test"),)


def configure(c, name: str, arg: str | None) -> None:
  """Sets the task, columns, labels, metric and data of GLUE task `name` on config c from the
  config's argument: a GLUE folder, "tfds", or None (the data.* keys decide)."""
  t = task(name)
  c.task.glue, c.task.kind = t.name, t.kind
  c.early_stopping.metric = t.metric
  c.data.header = t.header
  c.data.id_column = t.id_column
  columns, labels = t.columns, t.labels
  if arg == "tfds":
    columns, labels = t.tfds_columns, t.tfds_labels
    c.data.id_column = "idx"
    c.data.header = True
    spec = lambda split: f"tfds:{t.tfds}@{split}"
    c.data.train_files, c.data.eval_files = spec("train"), spec(t.dev[1])
    c.data.extra_eval = ";".join(f"{n}={spec(split)}" for n, _, split in t.extra_dev)
    c.data.test_files = ";".join(f"{n}={spec(split)}" for n, _, split in _tests(t))
  elif arg:
    folder = epath.Path(arg)
    c.data.train_files = str(folder / "train.tsv")
    # GLUE's dev set is the evaluation set when the folder has it; else a part of train is held out.
    dev = folder / t.dev[0]
    c.data.eval_files = str(dev) if dev.exists() else ""
    c.data.extra_eval = ";".join(f"{n}={folder / f}" for n, f, _ in t.extra_dev
                                 if (folder / f).exists())
    c.data.test_files = ";".join(f"{n}={folder / f}" for n, f, _ in _tests(t)
                                 if (folder / f).exists())
  c.task.text_column, c.task.text_pair_column, c.task.label_column = columns
  c.task.labels = tuple(labels)
  if t.kind == "classification" and len(labels) == 2:
    c.task.positive_label = labels[1]
  # Without a dev set, 10% of train by a hash of its text (SST-2's config groups its phrases).
  c.data.holdout_fraction = 0.0 if c.data.eval_files else 0.1


def test_reading(t: GlueTask, task_cfg, data_cfg):
  """(task, data) configs for reading a GLUE test file: CoLA's test.tsv has a header and other
  columns than its train.tsv (TFDS's test splits have the train features)."""
  if t.test_columns is None or data_cfg.id_column == "idx":
    return task_cfg, data_cfg
  task_cfg, data_cfg = config_dict.ConfigDict(task_cfg.to_dict()), config_dict.ConfigDict(
      data_cfg.to_dict())
  task_cfg.text_column, task_cfg.text_pair_column = t.test_columns
  data_cfg.header = True
  return task_cfg, data_cfg


def submission_value(t: GlueTask, label: str) -> str:
  """A model label as GLUE's submission wants it (TFDS class names -> GLUE's 0/1 and names)."""
  if label in t.labels:
    return label
  if label in t.tfds_labels:
    return t.labels[t.tfds_labels.index(label)]
  raise ValueError(f"label {label!r} is not one of GLUE {t.name}'s {list(t.labels)} "
                   f"(or TFDS's {list(t.tfds_labels)})")


def parse_named(spec: str, key: str) -> list[tuple[str, str]]:
  """"NAME=FILES;NAME=FILES" (a lone FILES is named after its file) -> [(name, files)]."""
  out = []
  for part in (p.strip() for p in str(spec).split(";")):
    if not part:
      continue
    name, eq, files = part.partition("=")
    if not eq or not name or os.sep in name or ":" in name:
      files = part
      stem = os.path.basename(part.split(",")[0].rstrip("/"))
      name = stem.split("@")[-1] if stem.startswith("tfds:") or "@" in stem else (
          os.path.splitext(stem)[0])
    out.append((name, files))
  names = [n for n, _ in out]
  if len(set(names)) != len(names):
    raise ValueError(f"{key}={spec!r} names a set twice: {names}")
  return out


def write_submission(path: str, t: GlueTask, labels: list[str], examples, outputs) -> None:
  """GLUE's submission file: "index<TAB>prediction", rows in index order (a TFDS split's records
  are shuffled; its idx feature is GLUE's index); STS-B's scores clipped to GLUE's 0-5."""
  rows = []
  for i, (ex, out) in enumerate(zip(examples, outputs)):
    index = int(ex.id) if ex.id is not None else i
    if t.kind == "regression":
      value = f"{min(5.0, max(0.0, float(out))):.3f}"
    else:
      value = submission_value(t, labels[int(np.argmax(out))])
    rows.append((index, value))
  rows.sort()
  target = epath.Path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  target.write_text("index\tprediction\n" + "".join(f"{i}\t{v}\n" for i, v in rows))
