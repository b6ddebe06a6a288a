"""Your own regression (a score per text or per pair, e.g. similarity 0-5): a TSV, CSV or JSONL
file with a text column (and optionally a text_pair column) and a numeric label column.

  python -m mebert.train --config=configs/finetune/regress.py --workdir=runs/score \
      --config.data.train_files=scores.csv [--config.task.text_pair_column=text_pair]

A linear head on [CLS] trained on mean squared error; reported as Pearson, Spearman and MSE.
Without eval_files, 10% is held out by a hash of the text.
"""

from mebert.tasks.defaults import finetune_defaults, minilm_folder


def get_config(arg=None):
  del arg
  c = finetune_defaults()
  c.task.kind = "regression"
  c.task.text_column, c.task.text_pair_column, c.task.label_column = "text", "", "label"
  c.data.holdout_fraction = 0.1
  c.data.seq_len = 128
  c.init.hf = minilm_folder()
  c.train.num_epochs = 5.0
  c.train.learning_rate = 5e-5
  c.train.batch_size = 32
  c.early_stopping.metric = "pearson"
  c.early_stopping.patience = 2
  return c
