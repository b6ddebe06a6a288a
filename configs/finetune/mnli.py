"""GLUE MNLI (3-way NLI) from all-MiniLM-L6-v2: early stopping on the matched dev set; --mode=eval
also scores the mismatched one (mismatched/accuracy).

  python -m mebert.train --config=configs/finetune/mnli.py:/path/to/glue/MNLI --workdir=runs/mnli
  python -m mebert.train --config=configs/finetune/mnli.py:tfds --workdir=runs/mnli   # glue/mnli
  python -m mebert.train --workdir=runs/mnli --mode=predict --output=submission/
      # MNLI-m.tsv and MNLI-mm.tsv
"""

from mebert.tasks import glue
from mebert.tasks.defaults import finetune_defaults, minilm_folder


def get_config(arg=None):
  c = finetune_defaults()
  glue.configure(c, "MNLI", arg)
  c.data.seq_len = 128
  c.init.hf = minilm_folder()
  c.train.num_epochs = 3.0
  c.train.learning_rate = 5e-5
  c.train.batch_size = 32
  c.eval.every_steps = 2000
  c.eval.batch_size = 128
  c.early_stopping.patience = 3
  return c
