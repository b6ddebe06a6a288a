"""GLUE QNLI question-answer entailment (accuracy; 105k pairs) from all-MiniLM-L6-v2.

  python -m mebert.train --config=configs/finetune/qnli.py:/path/to/glue/QNLI --workdir=runs/qnli
  python -m mebert.train --config=configs/finetune/qnli.py:tfds --workdir=runs/qnli   # glue/qnli
"""

from mebert.tasks import glue
from mebert.tasks.defaults import finetune_defaults, minilm_folder


def get_config(arg=None):
  c = finetune_defaults()
  glue.configure(c, "QNLI", arg)
  c.data.seq_len = 256  # context sentences run long
  c.init.hf = minilm_folder()
  c.train.num_epochs = 3.0
  c.train.learning_rate = 5e-5
  c.train.batch_size = 32
  c.eval.every_steps = 1000
  c.eval.batch_size = 128
  c.early_stopping.patience = 3
  return c
