"""GLUE CoLA acceptability (Matthews correlation) from all-MiniLM-L6-v2.

  python -m mebert.train --config=configs/finetune/cola.py:/path/to/glue/CoLA --workdir=runs/cola
  python -m mebert.train --config=configs/finetune/cola.py:tfds --workdir=runs/cola   # glue/cola
CoLA's train.tsv and dev.tsv have no header (source, label, original label, sentence); its
test.tsv has one (index, sentence).
"""

from mebert.tasks import glue
from mebert.tasks.defaults import finetune_defaults, minilm_folder


def get_config(arg=None):
  c = finetune_defaults()
  glue.configure(c, "CoLA", arg)
  c.data.seq_len = 64  # single sentences of at most 47 words
  c.init.hf = minilm_folder()
  c.train.num_epochs = 5.0
  c.train.learning_rate = 5e-5
  c.train.batch_size = 32
  c.eval.every_steps = 0  # once per epoch
  c.early_stopping.patience = 2
  return c
