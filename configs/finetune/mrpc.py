"""GLUE MRPC paraphrase pairs (F1 and accuracy) from all-MiniLM-L6-v2.

  python -m mebert.train --config=configs/finetune/mrpc.py --workdir=runs/mrpc
Arguments: none (../shared/data/mrpc), "tfds" (glue/mrpc), or a folder with GLUE's train/dev.tsv.
MRPC's TSVs have a BOM and quotes inside sentences: the TSV reader splits on tabs only.
"""

from mebert.tasks.defaults import finetune_defaults, glue_files, minilm_folder, shared_data


def get_config(arg=None):
  c = finetune_defaults()
  c.task.kind = "classification"
  glue_files(c, arg, local_dir=shared_data("mrpc"), train="train.tsv", dev="dev.tsv",
             tfds_name="glue/mrpc", tfds_dev="validation",
             columns=("#1 String", "#2 String", "Quality"),
             tfds_columns=("sentence1", "sentence2", "label"))
  c.task.positive_label = "1"
  c.data.seq_len = 128
  c.init.hf = minilm_folder()
  c.train.num_epochs = 5.0
  c.train.learning_rate = 5e-5
  c.train.batch_size = 32
  c.eval.every_steps = 0  # once per epoch
  c.early_stopping.metric = "f1"
  c.early_stopping.patience = 2
  return c
