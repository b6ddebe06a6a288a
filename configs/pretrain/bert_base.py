"""BERT-base pretraining with the published recipe (Devlin et al. 2019, appendix A.2).

Phase 1: 90% of 1M steps at 128 tokens (20 predictions each); phase 2: the last 10% at 512 tokens
(80 predictions), started from phase 1's weights. Batch 256 sequences, Adam lr 1e-4, beta2 0.999,
weight decay 0.01, 10k warmup steps, linear decay. On a TPU VM (see launch/tpu_vm.sh):

  python -m mebert.train --config=configs/pretrain/bert_base.py:phase1 --workdir=gs://BUCKET/base-p1 \
      --config.data.corpus=tfds:wikipedia/20230601.en --config.data.vocab=PATH/vocab.txt
  python -m mebert.train --config=configs/pretrain/bert_base.py:phase2 --workdir=gs://BUCKET/base-p2 \
      --config.init.checkpoint=gs://BUCKET/base-p1 ...
"""

from mebert.model.config import bert_size
from mebert.train.defaults import model_defaults, pretrain_defaults


def recipe(size: str, arg: str | None):
  phase = arg or "phase1"
  if phase not in ("phase1", "phase2"):
    raise ValueError(f"config argument {phase!r}: expected phase1 or phase2")
  c = pretrain_defaults()
  c.model = model_defaults(**bert_size(size), vocab_size=30522)
  c.data.vocab_size = 30522
  c.data.whole_word_masking = True
  c.train.batch_size = 256
  c.train.learning_rate = 1e-4
  if phase == "phase1":
    c.data.seq_len, c.data.max_predictions_per_seq = 128, 20
    c.train.num_steps, c.train.warmup_steps = 900_000, 10_000
  else:
    c.data.seq_len, c.data.max_predictions_per_seq = 512, 80
    c.train.num_steps, c.train.warmup_steps = 100_000, 1_000
  c.checkpoint.every_steps = 5_000
  c.eval.every_steps = 5_000
  return c


def get_config(arg=None):
  return recipe("base", arg)
