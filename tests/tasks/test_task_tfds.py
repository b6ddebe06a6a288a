"""TFDS inputs by name (tfds:NAME@SPLIT): a small GLUE-like dataset prepared as array_record here,
read through tfds.data_source without TensorFlow: class names, pairs, -1 = unlabeled, tag lists."""

import sys

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from mebert.tasks import data  # noqa: E402

ROWS = [("a fine film", "it is good", 1), ("dull", "it is bad", 0), ("great fun", "good", 1)]


class MebertTestPairs(tfds.core.GeneratorBasedBuilder):
  """GLUE-shaped: sentence1, sentence2, label (ClassLabel), and CoNLL-shaped tokens/ner_tags."""

  VERSION = tfds.core.Version("1.0.0")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    from etils import epath

    return epath.Path(__file__)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "sentence1": tfds.features.Text(), "sentence2": tfds.features.Text(),
        "label": tfds.features.ClassLabel(names=["negative", "positive"]),
        "tokens": tfds.features.Sequence(tfds.features.Text()),
        "ner_tags": tfds.features.Sequence(tfds.features.ClassLabel(names=["O", "B-PER", "I-PER"]))}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(labeled=True),
            "test": self._generate_examples(labeled=False)}

  def _generate_examples(self, labeled):
    for i, (a, b, y) in enumerate(ROWS):
      yield i, {"sentence1": a, "sentence2": b, "label": y if labeled else -1,
                "tokens": a.split(), "ner_tags": [1] + [0] * (len(a.split()) - 1)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("tfds")
  MebertTestPairs(data_dir=str(out), file_format="array_record").download_and_prepare()
  return str(out)


def test_pairs_with_class_names(data_dir, tiny_config):
  c = tiny_config()
  c.task.text_column, c.task.text_pair_column = "sentence1", "sentence2"
  c.data.tfds_data_dir = data_dir
  examples = data.read_examples("tfds:mebert_test_pairs@train", c.task, c.data)
  assert sorted((e.text, e.pair, e.label) for e in examples) == sorted(
      (a, b, ["negative", "positive"][y]) for a, b, y in ROWS)
  assert examples[0].file == "tfds:mebert_test_pairs@train"
  unlabeled = data.read_examples("tfds:mebert_test_pairs@test", c.task, c.data)
  assert all(e.label is None for e in unlabeled)
  with pytest.raises(data.DataError, match="no label"):
    data.check_labels(unlabeled, ["negative", "positive"], "classification")
  assert "tensorflow" not in sys.modules


def test_token_tags_and_errors(data_dir, tiny_config):
  c = tiny_config("token_classification")
  c.task.text_column, c.task.label_column = "tokens", "ner_tags"
  c.data.tfds_data_dir = data_dir
  examples = data.read_examples("tfds:mebert_test_pairs@train", c.task, c.data)
  by_text = {tuple(e.text): e.label for e in examples}
  assert by_text[("a", "fine", "film")] == ["B-PER", "O", "O"]
  c.task.text_column = "nope"
  with pytest.raises(data.DataError, match="no feature 'nope'"):
    data.read_examples("tfds:mebert_test_pairs@train", c.task, c.data)
  with pytest.raises(FileNotFoundError, match="tfds:glue_missing@train"):
    data.read_examples("tfds:glue_missing@train", c.task, c.data)
