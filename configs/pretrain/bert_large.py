"""BERT-large pretraining with the published recipe (same schedule as base, 24 layers x 1024).

  python -m mebert.train --config=configs/pretrain/bert_large.py:phase1 --workdir=gs://BUCKET/large-p1

`:lamb` is You et al. 2019's large-batch recipe (LAMB, batch 32k at 128 tokens, lr 6e-3 with
2000/7037 warmup steps in 7037 steps), for pods where the batch fits.
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location(
    "bert_base_recipe", pathlib.Path(__file__).with_name("bert_base.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config(arg=None):
  if arg == "lamb":
    c = _base.recipe("large", "phase1")
    c.train.optimizer = "lamb"
    c.train.batch_size = 32_768
    c.train.learning_rate = 6e-3
    c.train.num_steps, c.train.warmup_steps = 7_037, 2_000
    c.train.schedule, c.train.decay_power = "polynomial", 0.5
    return c
  c = _base.recipe("large", arg)
  c.model.remat_policy = "dots_no_batch"  # 24 layers at 512 tokens: trade compute for memory
  c.model.scan_layers = True
  return c
