"""The CPU demo: a 2-layer, 128-wide BERT pretrained on the built-in corpus in a few minutes.

  python -m mebert.train --config=configs/pretrain/tiny.py --workdir=runs/tiny

The first run trains a sentencepiece vocabulary from the corpus and keeps it in the workdir; the
same command again resumes from the last checkpoint.
"""

from mebert.model.config import bert_size
from mebert.train.defaults import model_defaults, pretrain_defaults


def get_config(arg=None):
  del arg
  c = pretrain_defaults()
  # No dropout: a few hundred steps cannot overfit 2 MB, and on CPU the random masks cost ~30%.
  c.model = model_defaults(**bert_size("tiny"), max_position_embeddings=128, dropout_rate=0.0,
                           attention_dropout_rate=0.0)
  c.data.corpus = "builtin"
  c.data.vocab_size = 8000
  c.data.seq_len = 128
  c.data.max_predictions_per_seq = 20
  c.data.eval_fraction = 0.1  # ~48 held-out documents: enough eval batches for a stable figure
  c.train.batch_size = 32
  c.train.num_steps = 600
  c.train.learning_rate = 2e-3  # a tiny model and short run take a high, quickly warmed-up rate
  c.train.warmup_steps = 60
  c.train.log_every = 50
  c.checkpoint.every_steps = 200
  c.eval.every_steps = 200
  c.eval.num_batches = 10
  return c
