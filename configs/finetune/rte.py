"""GLUE RTE entailment (sentence pairs, NLI) from all-MiniLM-L6-v2.

  python -m mebert.train --config=configs/finetune/rte.py:/path/to/glue/RTE --workdir=runs/rte
  python -m mebert.train --config=configs/finetune/rte.py:tfds --workdir=runs/rte     # glue/rte
"""

from mebert.tasks import glue
from mebert.tasks.defaults import finetune_defaults, minilm_folder


def get_config(arg=None):
  c = finetune_defaults()
  glue.configure(c, "RTE", arg)
  c.data.seq_len = 256  # premises are paragraphs
  c.init.hf = minilm_folder()
  c.train.num_epochs = 5.0
  c.train.learning_rate = 3e-5
  c.train.batch_size = 16
  c.eval.every_steps = 0
  c.early_stopping.patience = 2
  return c
