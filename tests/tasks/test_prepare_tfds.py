"""TFDS's own GLUE builder prepares glue/sst2 as array_record without TensorFlow (its download step
served from a local GLUE-shaped folder: no network), and a GLUE config reads it back with
`configs/finetune/sst2.py:tfds`: features, class names, the test split's idx."""

import importlib.util
import pathlib
import sys

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from mebert.tasks import data, glue, prepare_tfds  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
TRAIN = [("a fine , moving film ", 1), ("dull and long ", 0), ("great fun ", 1), ("a mess ", 0)]


def _config(arg):
  spec = importlib.util.spec_from_file_location("sst2_cfg", REPO / "configs/finetune/sst2.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_glue_builder_prepares_array_record_without_tensorflow(tmp_path, monkeypatch):
  glue_dir = tmp_path / "download" / "SST-2"  # as GLUE's SST-2.zip extracts
  glue_dir.mkdir(parents=True)
  rows = lambda pairs: "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in pairs)
  (glue_dir / "train.tsv").write_text(rows(TRAIN))
  (glue_dir / "dev.tsv").write_text(rows(TRAIN[:2]))
  (glue_dir / "test.tsv").write_text("index\tsentence\n0\tlovely\n1\tawful\n2\tfine\n")
  # The builder's only network step: download_and_extract(url) -> the extracted folder.
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                      lambda self, url: str(tmp_path / "download"))
  out = prepare_tfds.prepare("glue/sst2", str(tmp_path / "tfds"),
                             tfds.download.DownloadConfig(register_checksums=False))
  assert any(p.name.startswith("glue-train.array_record") for p in pathlib.Path(out).iterdir())
  assert "tensorflow" not in sys.modules

  c = _config("tfds")
  c.data.tfds_data_dir = str(tmp_path / "tfds")
  train = data.read_examples(c.data.train_files, c.task, c.data)
  assert sorted((e.text, e.label) for e in train) == sorted(
      (s.strip(), ["negative", "positive"][y]) for s, y in TRAIN)
  assert tuple(c.task.labels) == ("negative", "positive")
  (name, spec), = glue.parse_named(c.data.test_files, "data.test_files")
  assert name == "SST-2" and spec == "tfds:glue/sst2@test"
  test = data.read_examples(spec, c.task, c.data, labeled=False)
  assert sorted((int(e.id), e.text) for e in test) == [(0, "lovely"), (1, "awful"), (2, "fine")]
  # Submission labels are GLUE's (0/1), whatever TFDS names its classes.
  assert glue.submission_value(glue.task("SST-2"), "positive") == "1"
