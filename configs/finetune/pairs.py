"""Your own sentence-pair classification (paraphrase, entailment, question-answer match): a TSV,
CSV or JSONL file with two text columns and a label column; labels read from the training file.

  python -m mebert.train --config=configs/finetune/pairs.py --workdir=runs/pairs \
      --config.data.train_files=pairs.jsonl [--config.data.eval_files=dev.jsonl] \
      [--config.task.text_column=premise --config.task.text_pair_column=hypothesis]

The pair is encoded as [CLS] text [SEP] text_pair [SEP], truncated longest-first to data.seq_len.
Without eval_files, 10% is held out by a hash of both texts.
"""

from mebert.tasks.defaults import finetune_defaults, minilm_folder


def get_config(arg=None):
  del arg
  c = finetune_defaults()
  c.task.kind = "classification"
  c.task.text_column, c.task.text_pair_column, c.task.label_column = "text", "text_pair", "label"
  c.data.holdout_fraction = 0.1
  c.data.seq_len = 128
  c.init.hf = minilm_folder()
  c.train.num_epochs = 3.0
  c.train.learning_rate = 5e-5
  c.train.batch_size = 32
  c.early_stopping.metric = "accuracy"
  c.early_stopping.patience = 2
  return c
