"""A local TFDS builder: a folder of text files -> an array_record dataset readable without TensorFlow.

  python -m mebert.data.tfds_corpus --input=DIR --data_dir=OUT [--one_doc_per_file]
  # then: config.data.corpus = "tfds:mebert_text_corpus/blank_lines"  config.data.tfds_data_dir = OUT

Why: a big local corpus (a Wikipedia dump you extracted, a crawl) is then read lazily and randomly
from array_record files instead of being held and tokenized in memory. The documents are made by
the same code as local-file corpora (corpora.read_documents: decoding fallbacks, blank-line or
per-file documents, long lines cut), so the two ways to read a folder give the same documents.

The format must be array_record: TFDS's default tfrecord writer needs TensorFlow. Importing this
module registers the builder, which `tfds.data_source("mebert_text_corpus/...")` needs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence

import tensorflow_datasets as tfds
from etils import epath

from mebert.data import corpora

NAME = "mebert_text_corpus"


class TextCorpusConfig(tfds.core.BuilderConfig):
  """How files become documents: split at blank lines, or one document per file."""

  def __init__(self, *, one_doc_per_file: bool, **kwargs):
    super().__init__(**kwargs)
    self.one_doc_per_file = one_doc_per_file


class MebertTextCorpus(tfds.core.GeneratorBasedBuilder):
  """Text files under the manual dir, one example {"text", "source"} per document."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the folder of text files as download_config.manual_dir."
  BUILDER_CONFIGS = [
      TextCorpusConfig(name="blank_lines", one_doc_per_file=False, description="A blank line ends a document."),
      TextCorpusConfig(name="files", one_doc_per_file=True, description="One document per file."),
  ]

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10 resolves this through `importlib_resources`, a package its dependencies no longer
    # install (ModuleNotFoundError in download_and_prepare); this module's file is the answer anyway.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    # tfds.core.DatasetInfo directly: dataset_info_from_configs() looks for metadata files next to
    # the builder's package and fails for a builder defined in a plain module.
    return tfds.core.DatasetInfo(
        builder=self, description="Documents of local text files (mebert).",
        features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "source": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    return {"train": self._generate_examples(root, corpora.expand_paths(root))}

  def _generate_examples(self, root: str, paths: list[str]):
    stats: dict[str, int] = {}
    for path in paths:
      rel = os.path.relpath(path, root)
      for i, doc in enumerate(corpora.read_documents(path, stats, one_doc_per_file=self.builder_config.one_doc_per_file)):
        yield f"{rel}#{i}", {"text": doc, "source": rel}
    logging.info("%s: %s", NAME, stats)


def prepare_text_folder(input_dir: str, data_dir: str, *, one_doc_per_file: bool = False) -> str:
  """Builds the dataset from input_dir into data_dir; returns the corpus spec that reads it."""
  if not os.path.isdir(input_dir):
    raise FileNotFoundError(f"{input_dir}: not a directory")
  config = "files" if one_doc_per_file else "blank_lines"
  builder = MebertTextCorpus(config=config, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=input_dir))
  return f"tfds:{NAME}/{config}"


def main(argv: Sequence[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description="Prepare a folder of text files as a TFDS array_record corpus.")
  ap.add_argument("--input", required=True, help="folder of text files (read recursively)")
  ap.add_argument("--data_dir", required=True, help="TFDS data dir to write to (use as data.tfds_data_dir)")
  ap.add_argument("--one_doc_per_file", action="store_true")
  args = ap.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  spec = prepare_text_folder(args.input, args.data_dir, one_doc_per_file=args.one_doc_per_file)
  print(json.dumps({"corpus": spec, "tfds_data_dir": args.data_dir}))


if __name__ == "__main__":
  main()
