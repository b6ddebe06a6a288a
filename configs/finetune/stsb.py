"""GLUE STS-B sentence similarity (regression on 0-5, Pearson/Spearman) from all-MiniLM-L6-v2.

  python -m mebert.train --config=configs/finetune/stsb.py:/path/to/glue/STS-B --workdir=runs/stsb
  python -m mebert.train --config=configs/finetune/stsb.py:tfds --workdir=runs/stsb   # glue/stsb
"""

from mebert.tasks import glue
from mebert.tasks.defaults import finetune_defaults, minilm_folder


def get_config(arg=None):
  c = finetune_defaults()
  glue.configure(c, "STS-B", arg)
  c.data.seq_len = 128
  c.init.hf = minilm_folder()
  c.train.num_epochs = 5.0
  c.train.learning_rate = 5e-5
  c.train.batch_size = 32
  c.eval.every_steps = 0
  c.early_stopping.patience = 2
  return c
