"""GLUE WNLI (Winograd pronoun resolution as NLI; 635 training pairs) from all-MiniLM-L6-v2.

  python -m mebert.train --config=configs/finetune/wnli.py:/path/to/glue/WNLI --workdir=runs/wnli
  python -m mebert.train --config=configs/finetune/wnli.py:tfds --workdir=runs/wnli   # glue/wnli
WNLI's dev set is adversarial to its train set: most models score at or below the majority class
(56.3% on dev); GLUE's baselines predict the majority class.
"""

from mebert.tasks import glue
from mebert.tasks.defaults import finetune_defaults, minilm_folder


def get_config(arg=None):
  c = finetune_defaults()
  glue.configure(c, "WNLI", arg)
  c.data.seq_len = 128
  c.init.hf = minilm_folder()
  c.train.num_epochs = 3.0
  c.train.learning_rate = 2e-5
  c.train.batch_size = 16
  c.eval.every_steps = 0
  c.early_stopping.patience = 0
  return c
