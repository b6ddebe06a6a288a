"""SST-2: distil a fine-tuned all-MiniLM-L6-v2 teacher (6 layers x 384) into 3 of its layers
(0, 2, 4), with soft targets, hidden-state and attention-map losses and the labels, for one epoch.

The teacher is a configs/finetune/sst2.py workdir (its best checkpoint), given as the config's
argument or --config.distill.teacher:

  python -m mebert.train --config=configs/finetune/sst2.py:/path/to/glue/SST-2 --workdir=runs/sst2
  python -m mebert.train --config=configs/distill/sst2_minilm_3layer.py:runs/sst2 --workdir=runs/sst2_l3
  python -m mebert.train --workdir=runs/sst2_l3 --mode=eval [--quantize=int8]
  python -m mebert.interop export-hf --from=runs/sst2_l3 --to=/tmp/sst2_l3_hf
  python -m mebert.compress.bench_distill --config=configs/distill/sst2_minilm_3layer.py:runs/sst2 \
      --teacher=runs/sst2 --student=runs/sst2_l3

The data files, held-out split and columns are the teacher's (read from its workdir's saved
config while data.train_files is empty), so teacher and student are scored on the same examples.
"""

from mebert.compress.distill import distill_defaults
from mebert.tasks import glue
from mebert.tasks.defaults import finetune_defaults


def get_config(arg=None):
  c = finetune_defaults()
  glue.configure(c, "SST-2", None)  # task and columns; the files come from the teacher's workdir
  distill_defaults(c, teacher=arg or "")
  c.distill.student_layers = (0, 2, 4)  # every other layer: the first, middle and upper thirds
  # layer_map () = uniform: student layers 0, 1, 2 learn from teacher layers 1, 3, 5.
  c.distill.temperature = 2.0
  c.distill.soft_weight = 1.0
  c.distill.hard_weight = 1.0
  c.distill.hidden_weight = 1.0
  c.distill.attention_weight = 1.0
  c.data.seq_len = 128
  c.train.num_epochs = 1.0
  c.train.learning_rate = 1e-4  # half the layers are new neighbours: a larger step than fine-tuning's
  c.train.batch_size = 32
  c.train.warmup_ratio = 0.06
  c.eval.every_steps = 500
  c.early_stopping.patience = 2
  return c
