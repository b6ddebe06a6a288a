"""GLUE QQP duplicate questions (F1 and accuracy; 364k pairs) from all-MiniLM-L6-v2.

  python -m mebert.train --config=configs/finetune/qqp.py:/path/to/glue/QQP --workdir=runs/qqp
  python -m mebert.train --config=configs/finetune/qqp.py:tfds --workdir=runs/qqp     # glue/qqp
"""

from mebert.tasks import glue
from mebert.tasks.defaults import finetune_defaults, minilm_folder


def get_config(arg=None):
  c = finetune_defaults()
  glue.configure(c, "QQP", arg)
  c.data.seq_len = 128
  c.init.hf = minilm_folder()
  c.train.num_epochs = 3.0
  c.train.learning_rate = 5e-5
  c.train.batch_size = 32
  c.eval.every_steps = 2000
  c.eval.batch_size = 128
  c.early_stopping.patience = 3
  return c
