"""Your own token tagging (named entities, parts of speech, any IOB2/IOBES or plain tags): CoNLL
files (one word per line, its tag in the last column, a blank line between sentences) or JSONL
({"tokens": [...], "tags": [...]}); the tag set is read from the training file ("O" first).

  python -m mebert.train --config=configs/finetune/tag.py --workdir=runs/tags \
      --config.data.train_files=train.conll [--config.data.eval_files=dev.conll]

Each word's tag is predicted at its first piece; --mode=predict writes one tag per input word.
Reported as entity-level span F1 (seqeval's rules) and tag accuracy. Without eval_files, 10% of
the sentences are held out by a hash of their words.
"""

from mebert.tasks.defaults import finetune_defaults, minilm_folder


def get_config(arg=None):
  del arg
  c = finetune_defaults()
  c.task.kind = "token_classification"
  c.task.text_column, c.task.label_column = "tokens", "tags"  # JSONL keys
  c.data.conll_word_column, c.data.conll_tag_column = 0, -1
  c.data.holdout_fraction = 0.1
  c.data.seq_len = 128
  c.init.hf = minilm_folder()
  c.train.num_epochs = 3.0
  c.train.learning_rate = 5e-5
  c.train.batch_size = 32
  c.early_stopping.metric = "span_f1"
  c.early_stopping.patience = 2
  return c
