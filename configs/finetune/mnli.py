"""GLUE MNLI (3-way NLI) from all-MiniLM-L6-v2; dev = validation_matched.

  python -m mebert.train --config=configs/finetune/mnli.py --workdir=runs/mnli      # tfds glue/mnli
  python -m mebert.train --config=configs/finetune/mnli.py:/path/to/glue/MNLI ...   # GLUE TSVs
MNLI is not in ../shared/data: by default it reads the TFDS dataset (prepared as array_record,
tfds.data_source(..., download=False)); a folder argument reads GLUE's train.tsv/dev_matched.tsv.
"""

from mebert.tasks.defaults import finetune_defaults, glue_files, minilm_folder


def get_config(arg=None):
  c = finetune_defaults()
  c.task.kind = "classification"
  glue_files(c, arg or "tfds", local_dir="", train="train.tsv", dev="dev_matched.tsv",
             tfds_name="glue/mnli", tfds_dev="validation_matched",
             columns=("sentence1", "sentence2", "gold_label"),
             tfds_columns=("premise", "hypothesis", "label"))
  c.data.seq_len = 128
  c.init.hf = minilm_folder()
  c.train.num_epochs = 3.0
  c.train.learning_rate = 5e-5
  c.train.batch_size = 32
  c.eval.every_steps = 2000
  c.eval.batch_size = 128
  c.early_stopping.metric = "accuracy"
  c.early_stopping.patience = 3
  return c
