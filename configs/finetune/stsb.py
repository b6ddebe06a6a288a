"""GLUE STS-B sentence similarity (regression on 0-5, Pearson/Spearman) from all-MiniLM-L6-v2.

  python -m mebert.train --config=configs/finetune/stsb.py --workdir=runs/stsb      # tfds glue/stsb
  python -m mebert.train --config=configs/finetune/stsb.py:/path/to/glue/STS-B ...  # GLUE TSVs
STS-B is not in ../shared/data: by default it reads the prepared TFDS dataset.
"""

from mebert.tasks.defaults import finetune_defaults, glue_files, minilm_folder


def get_config(arg=None):
  c = finetune_defaults()
  c.task.kind = "regression"
  glue_files(c, arg or "tfds", local_dir="", train="train.tsv", dev="dev.tsv",
             tfds_name="glue/stsb", tfds_dev="validation",
             columns=("sentence1", "sentence2", "score"),
             tfds_columns=("sentence1", "sentence2", "label"))
  c.data.seq_len = 128
  c.init.hf = minilm_folder()
  c.train.num_epochs = 5.0
  c.train.learning_rate = 5e-5
  c.train.batch_size = 32
  c.eval.every_steps = 0
  c.early_stopping.metric = "pearson"
  c.early_stopping.patience = 2
  return c
