"""GLUE configs: a folder's dev.tsv is the evaluation set, the test files become data.test_files,
CoLA's header-less files read by index, and submission files as GLUE's server wants them."""

import numpy as np
import pytest

from mebert.tasks import data, glue
from mebert.tasks.data import Example
from mebert.tasks.defaults import finetune_defaults


def _configured(name, arg):
  c = finetune_defaults()
  glue.configure(c, name, arg)
  return c


def test_folder_dev_and_test_files(tmp_path):
  folder = tmp_path / "MNLI"
  folder.mkdir()
  for f in ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv", "test_matched.tsv",
            "test_mismatched.tsv"):
    (folder / f).write_text("x\n")
  c = _configured("MNLI", str(folder))
  assert c.data.eval_files == str(folder / "dev_matched.tsv") and c.data.holdout_fraction == 0
  assert glue.parse_named(c.data.extra_eval, "k") == [("mismatched", str(folder / "dev_mismatched.tsv"))]
  assert [n for n, _ in glue.parse_named(c.data.test_files, "k")] == ["MNLI-m", "MNLI-mm"]
  assert (c.task.text_column, c.task.text_pair_column, c.task.label_column) == (
      "sentence1", "sentence2", "gold_label")
  rte = tmp_path / "RTE"
  rte.mkdir()
  (rte / "train.tsv").write_text("x\n")
  c = _configured("RTE", str(rte))  # no dev.tsv: a hold-out of train, no test files
  assert c.data.eval_files == "" and c.data.holdout_fraction == 0.1 and c.data.test_files == ""
  c = _configured("QQP", "tfds")
  assert c.data.train_files == "tfds:glue/qqp@train" and c.data.id_column == "idx"
  assert tuple(c.task.labels) == ("not_duplicate", "duplicate") and c.early_stopping.metric == "f1"
  with pytest.raises(ValueError, match="task.glue='SST2' is not a GLUE task"):
    glue.task("SST2")
  with pytest.raises(ValueError, match="names a set twice"):
    glue.parse_named("a=x.tsv;a=y.tsv", "data.test_files")


def test_cola_reads_by_index_and_its_test_file_by_header(tmp_path):
  folder = tmp_path / "CoLA"
  folder.mkdir()
  (folder / "train.tsv").write_text("gj04\t1\t\tOur friends won't buy this.\n"
                                    "gj04\t0\t*\tThey drank the pub.\n")
  (folder / "dev.tsv").write_text("gj04\t1\t\tThe sailors rode the breeze.\n")
  (folder / "test.tsv").write_text("index\tsentence\n0\tBill whistled.\n1\tHarry coughed himself.\n")
  c = _configured("CoLA", str(folder))
  train = data.read_examples(c.data.train_files, c.task, c.data)
  assert [(e.text, e.label) for e in train] == [("Our friends won't buy this.", "1"),
                                                ("They drank the pub.", "0")]
  (name, spec), = glue.parse_named(c.data.test_files, "data.test_files")
  task_cfg, data_cfg = glue.test_reading(glue.task("CoLA"), c.task, c.data)
  test = data.read_examples(spec, task_cfg, data_cfg, labeled=False)
  assert name == "CoLA" and [(e.id, e.text) for e in test] == [("0", "Bill whistled."),
                                                               ("1", "Harry coughed himself.")]


def test_submission_files(tmp_path):
  mnli = glue.task("MNLI")
  examples = [Example("p", "h", id=str(i)) for i in (2, 0, 1)]  # a TFDS split's shuffled order
  probs = np.array([[0.1, 0.8, 0.1], [0.9, 0.05, 0.05], [0.2, 0.2, 0.6]])
  glue.write_submission(str(tmp_path / "MNLI-m.tsv"), mnli, list(mnli.tfds_labels), examples, probs)
  assert (tmp_path / "MNLI-m.tsv").read_text() == (
      "index\tprediction\n0\tentailment\n1\tcontradiction\n2\tneutral\n")
  sst2 = glue.task("SST-2")
  glue.write_submission(str(tmp_path / "SST-2.tsv"), sst2, ["negative", "positive"],
                        [Example("a"), Example("b")], np.array([[0.3, 0.7], [0.6, 0.4]]))
  assert (tmp_path / "SST-2.tsv").read_text() == "index\tprediction\n0\t1\n1\t0\n"
  stsb = glue.task("STS-B")
  glue.write_submission(str(tmp_path / "STS-B.tsv"), stsb, [], [Example("a", "b")] * 3,
                        np.array([5.7, -0.2, 2.34567]))
  assert (tmp_path / "STS-B.tsv").read_text() == "index\tprediction\n0\t5.000\n1\t0.000\n2\t2.346\n"
  with pytest.raises(ValueError, match="label 'maybe' is not one of GLUE RTE's"):
    glue.submission_value(glue.task("RTE"), "maybe")
