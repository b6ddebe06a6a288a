"""GLUE RTE entailment (sentence pairs, NLI) from all-MiniLM-L6-v2.

  python -m mebert.train --config=configs/finetune/rte.py --workdir=runs/rte
Arguments: none (../shared/data/rte), "tfds" (glue/rte), or a folder with GLUE's train/dev.tsv.
"""

from mebert.tasks.defaults import finetune_defaults, glue_files, minilm_folder, shared_data


def get_config(arg=None):
  c = finetune_defaults()
  c.task.kind = "classification"
  glue_files(c, arg, local_dir=shared_data("rte"), train="train.tsv", dev="dev.tsv",
             tfds_name="glue/rte", tfds_dev="validation",
             columns=("sentence1", "sentence2", "label"),
             tfds_columns=("sentence1", "sentence2", "label"))
  c.data.seq_len = 256  # premises are paragraphs
  c.init.hf = minilm_folder()
  c.train.num_epochs = 5.0
  c.train.learning_rate = 3e-5
  c.train.batch_size = 16
  c.eval.every_steps = 0
  c.early_stopping.metric = "accuracy"
  c.early_stopping.patience = 2
  return c
