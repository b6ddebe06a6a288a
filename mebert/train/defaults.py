"""Every key a pretraining config has, with its default and why. Experiment files in configs/
start from `pretrain_defaults()` and change what differs; all configs are locked, so a mistyped
`--config.x=y` fails and names the key."""

from __future__ import annotations

import dataclasses

from ml_collections import config_dict

from mebert.model.config import ModelConfig
from mebert.model.electra import ElectraConfig


def model_defaults(**overrides) -> config_dict.ConfigDict:
  """All ModelConfig fields; vocab_size 0 means "the tokenizer's size"."""
  values = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
  values["vocab_size"] = 0
  values.update(overrides)
  return config_dict.ConfigDict(values)


def pretrain_defaults() -> config_dict.ConfigDict:
  from mebert.data.config import default_data_config

  c = config_dict.ConfigDict()
  c.seed = 42  # parameters, dropout and the data stream all derive from it
  c.model = model_defaults()
  c.data = default_data_config()

  c.train = config_dict.ConfigDict()
  c.train.batch_size = 256  # global, over all processes; split over the data and fsdp mesh axes
  c.train.num_steps = 1_000_000
  c.train.grad_accum_steps = 1  # micro-batches per update: same update, less activation memory
  c.train.objective = "mlm"  # "mlm" (BERT's MLM, + NSP/SOP per data.next_sentence) or "electra"
  c.train.optimizer = "adamw"  # "lamb" for very large batches, "stable_adamw" (ModernBERT's)
  c.train.learning_rate = 1e-4
  c.train.warmup_steps = 10_000  # cut to the schedule when longer (with a warning)
  c.train.warmup_ratio = 0.0  # used when warmup_steps < 0: this fraction of the schedule
  # The steps the learning-rate schedule spans; 0 = train.num_steps. Longer when this run is the
  # first phase of one schedule over several (BERT's phase 1: 900k steps of a 1M-step schedule).
  c.train.schedule_steps = 0
  c.train.schedule = "linear"  # linear | cosine | polynomial | constant decay after warmup
  c.train.end_learning_rate_ratio = 0.0
  c.train.decay_power = 1.0  # polynomial schedule only
  c.train.weight_decay = 0.01  # never on LayerNorm parameters or biases
  c.train.b1 = 0.9
  c.train.b2 = 0.999
  c.train.eps = 1e-6
  c.train.clip_grad_norm = 1.0
  c.train.log_every = 100
  c.train.max_nonfinite_in_row = 10  # stop after this many NaN/Inf steps in a row (each skipped)
  c.train.profile_steps = ""  # "START,STOP": record a jax.profiler trace of those steps
  # Debug: a device-to-host read between log steps (a stray float(loss)) raises instead of quietly
  # making every step wait for the devices (mebert/train/host_sync.py).
  c.train.guard_host_sync = False

  # ELECTRA's settings (train.objective="electra"; mebert.model.electra.ElectraConfig).
  c.electra = config_dict.ConfigDict(dataclasses.asdict(ElectraConfig()))

  c.checkpoint = config_dict.ConfigDict()
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep = 2  # latest N; the best by eval metric is kept besides
  c.checkpoint.best_metric = "mlm_accuracy"  # "" = no best checkpoint (and no early stopping)
  # Whether the best is the highest or the lowest value: max | min | auto (by the metric's name:
  # loss, *_loss, mse, perplexity, *_error -> min; otherwise max).
  c.checkpoint.best_mode = "auto"
  c.checkpoint.async_save = True

  # Evaluations of checkpoint.best_metric without improvement before the run stops; 0 = never.
  c.early_stopping = config_dict.ConfigDict()
  c.early_stopping.patience = 0
  c.early_stopping.min_delta = 0.0

  c.eval = config_dict.ConfigDict()
  c.eval.every_steps = 1000
  c.eval.num_batches = 20  # 0 = the whole held-out split
  c.eval.batch_size = 0  # 0 = train.batch_size

  c.mesh = config_dict.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.rules = ()  # empty = mebert.parallel.mesh.DEFAULT_RULES

  # --mode=compile only: a TPU slice to compile for ("tpu:v5p-8"; mebert.train.compile_report);
  # empty = this machine's devices.
  c.compile = config_dict.ConfigDict()
  c.compile.target = ""

  c.init = config_dict.ConfigDict()
  c.init.hf = ""  # a Hugging Face BERT folder to start from (its architecture and tokenizer)
  c.init.hf_parity = False  # check the import against transformers first (needs torch)
  c.init.checkpoint = ""  # a mebert workdir whose (latest) params to start from
  # A mebert workdir whose whole train state (params, optimizer state, step) to continue, on a
  # fresh data stream: the next phase of one run (BERT's phase 2 at 512 tokens). None = required.
  c.init.continue_from = ""
  c.init.restart_schedule = False  # continue_from: step and optimizer counts from 0, moments kept
  return c
