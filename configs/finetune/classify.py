"""Your own text classification: a TSV, CSV or JSONL file with a text column and a label column;
the labels are read from the training file (sorted; saved with the model).

  python -m mebert.train --config=configs/finetune/classify.py --workdir=runs/mine \
      --config.data.train_files=reviews.tsv [--config.data.eval_files=dev.tsv] \
      [--config.task.text_column=review --config.task.label_column=stars]

Columns are header names (TSV/CSV with a header row), 0-based indices (data.header=False), or
JSONL keys. Without eval_files, 10% of the training file is held out by a hash of the text.
"""

from mebert.tasks.defaults import finetune_defaults, minilm_folder


def get_config(arg=None):
  del arg
  c = finetune_defaults()
  c.task.kind = "classification"
  c.task.text_column, c.task.text_pair_column, c.task.label_column = "text", "", "label"
  c.data.holdout_fraction = 0.1
  c.data.seq_len = 128
  c.init.hf = minilm_folder()
  c.train.num_epochs = 3.0
  c.train.learning_rate = 5e-5
  c.train.batch_size = 32
  c.early_stopping.metric = "accuracy"
  c.early_stopping.patience = 2
  return c
