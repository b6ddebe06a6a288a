"""BERT-large pretraining (24 layers x 1024) with one of two published recipes.

`:phase1` / `:phase2`: Devlin et al. 2019's, exactly as configs/pretrain/bert_base.py (one run of
1M steps of 256 sequences, Adam lr 1e-4, one schedule; 90% of the steps at 128 tokens, then 10% at
512 continuing phase 1's optimizer state and step via init.continue_from):

  python -m mebert.train --config=configs/pretrain/bert_large.py:phase1 --workdir=gs://BUCKET/large-p1
  python -m mebert.train --config=configs/pretrain/bert_large.py:phase2 --workdir=gs://BUCKET/large-p2 \
      --config.init.continue_from=gs://BUCKET/large-p1

`:lamb` / `:lamb_phase2`: NVIDIA's LAMB recipe (DeepLearningExamples, PyTorch/LanguageModeling/
BERT/scripts/run_pretraining.sh; the 64k/32k mixed-batch schedule of You et al. 2019, "Large
Batch Optimization for Deep Learning: Training BERT in 76 minutes", 8599 steps in all):
  phase 1: 7038 steps of 65,536 sequences at 128 tokens, lr 6e-3, warmup 28.43% (2001 steps);
  phase 2: 1563 steps of 32,768 sequences at 512 tokens, lr 4e-3, warmup 12.8% (200 steps),
           continuing phase 1's weights and LAMB moments with a schedule of its own, from step 0
           (You et al.'s "re-warm-up"; init.continue_from + init.restart_schedule).
Both decay polynomially with power 0.5 after the warmup. NVIDIA's scheduler decays from the
start of the run's clock, (1 - step/total)^0.5, so its rate drops to 85% of the peak as warmup
ends; here the decay spans the steps after the warmup (mebert.train.optimizer), starting at the
peak. LAMB here leaves LayerNorm and biases out of both the weight decay and the trust ratio, as
NVIDIA's does. NVIDIA reaches the batch with gradient accumulation (128 and 512 micro-batches on 8
GPUs); a TPU v3 pod's 1024 chips hold 64 sequences each. On fewer devices set
train.grad_accum_steps so that a micro-batch fits: each device then runs
batch / (devices x grad_accum_steps) of its own rows per micro-step. Compiled for a v5p-128
(64 chips, `--mode=compile --config.compile.target=tpu:v5p-128`), grad_accum_steps=8 (128 rows per
chip per micro-step) peaks at 32 GiB of a chip's 95 (docs/tpu.md). Compute dtype and attention:
as configs/pretrain/bert_base.py (bf16 on TPU/GPU; XLA attention, for BERT's attention dropout).
"""

import importlib.util
import pathlib

from ml_collections import config_dict

_spec = importlib.util.spec_from_file_location(
    "bert_base_recipe", pathlib.Path(__file__).with_name("bert_base.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)

ARGS = ("phase1", "phase2", "lamb", "lamb_phase2")


def lamb_recipe(phase: str):
  c = _base.recipe("large", "phase1" if phase == "lamb" else "phase2")
  c.train.optimizer = "lamb"
  c.train.schedule, c.train.decay_power = "polynomial", 0.5
  c.train.schedule_steps = 0  # each phase has its own schedule
  if phase == "lamb":
    c.train.batch_size, c.train.learning_rate = 65_536, 6e-3
    c.train.num_steps, c.train.warmup_steps = 7_038, 2_001
  else:
    c.train.batch_size, c.train.learning_rate = 32_768, 4e-3
    c.train.num_steps, c.train.warmup_steps = 1_563, 200
    c.init.continue_from = config_dict.placeholder(str)  # the `:lamb` workdir
    c.init.restart_schedule = True
  c.checkpoint.every_steps = c.eval.every_steps = 200
  return c


def get_config(arg=None):
  arg = arg or "phase1"
  if arg not in ARGS:
    raise ValueError(f"config argument {arg!r}: expected one of {', '.join(ARGS)}")
  c = lamb_recipe(arg) if arg.startswith("lamb") else _base.recipe("large", arg)
  if not arg.startswith("lamb"):
    c.model.remat_policy = "dots_no_batch"  # 24 layers at 512 tokens: trade compute for memory
    c.model.scan_layers = True
  return c
