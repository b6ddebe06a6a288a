"""Prepares TFDS datasets as array_record, the format mebert reads without TensorFlow.

  python -m mebert.tasks.prepare_tfds glue/sst2 glue/mnli conll2003 [--data_dir=DIR]

Each builder downloads its source files (GLUE's zips, CoNLL's archive) and writes
DATA_DIR/NAME/CONFIG/VERSION/*.array_record-* plus its metadata; the configs then read
`tfds:glue/sst2@train` and the like (configs/finetune/sst2.py:tfds). What is true on this stack
(tensorflow-datasets 4.9, no TensorFlow installed): the GLUE and CoNLL-2003 builders generate
their examples with Python's csv and etils.epath, so download_and_prepare(file_format=
"array_record") runs without TensorFlow; the default tfrecord format would import it and fail.
"""

from __future__ import annotations

from absl import app, flags

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where the prepared datasets go (default: "
                                "TFDS's, ~/tensorflow_datasets; the configs' data.tfds_data_dir).")


def register(name: str) -> None:
  """Imports the TFDS module that defines dataset `name` (glue/sst2 -> text/glue.py).

  Without TensorFlow, tfds's registry does not find its own builders by name ("Dataset glue not
  found") until their module is imported; reading and preparing both need it."""
  import importlib
  import pathlib

  import tensorflow_datasets as tfds

  family = name.split("/")[0].split(":")[0]
  if family in tfds.list_builders(with_community_datasets=False):
    return
  root = pathlib.Path(tfds.__file__).parent
  for path in sorted(root.glob(f"*/{family}.py")) + sorted(root.glob(f"*/{family}/{family}.py")) + (
      sorted(root.glob(f"*/{family}/{family}_dataset_builder.py"))):
    importlib.import_module("tensorflow_datasets." + ".".join(
        path.relative_to(root).with_suffix("").parts))
    return


def prepare(name: str, data_dir: str | None = None, download_config=None) -> str:
  """Prepares one dataset as array_record; returns the folder it wrote."""
  import tensorflow_datasets as tfds

  register(name)
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(download_config=download_config)
  return str(builder.data_path)


def main(argv):
  names = argv[1:]
  if not names:
    raise app.UsageError("name at least one dataset, e.g. glue/sst2")
  for name in names:
    print(f"{name}: {prepare(name, _DATA_DIR.value)}", flush=True)


if __name__ == "__main__":
  app.run(main)
