"""GLUE MRPC paraphrase pairs (F1 and accuracy) from all-MiniLM-L6-v2.

  python -m mebert.train --config=configs/finetune/mrpc.py:/path/to/glue/MRPC --workdir=runs/mrpc
  python -m mebert.train --config=configs/finetune/mrpc.py:tfds --workdir=runs/mrpc   # glue/mrpc
MRPC's TSVs have a BOM and quotes inside sentences: the TSV reader splits on tabs only.
"""

from mebert.tasks import glue
from mebert.tasks.defaults import finetune_defaults, minilm_folder


def get_config(arg=None):
  c = finetune_defaults()
  glue.configure(c, "MRPC", arg)
  c.data.seq_len = 128
  c.init.hf = minilm_folder()
  c.train.num_epochs = 5.0
  c.train.learning_rate = 5e-5
  c.train.batch_size = 32
  c.eval.every_steps = 0  # once per epoch
  c.early_stopping.patience = 2
  return c
