"""The PyTorch peer for fine-tuning: Hugging Face transformers on the same split and recipe as mebert.

  python -m mebert.bench.finetune_peer --config=configs/finetune/sst2.py --json=peer_sst2.json \
      [--config.train.num_epochs=2 ...]

Reads the config exactly as `python -m mebert.train` does (same files, same held-out split, same
labels, same WordPiece ids through mebert's tokenizer), then trains `BertForSequenceClassification`
/ `BertForTokenClassification` from config.init.hf the way a Hugging Face user would: random order
each epoch, dynamic padding (each batch padded to its longest row), AdamW with the config's rate,
betas, eps and weight decay (not on biases and LayerNorm), global-norm clipping, warmup then linear
decay, fp32, all CPU threads. It evaluates once at the end on the dev split with mebert's metrics.
Training time excludes tokenization and evaluation, as mebert's `train_time_s` does. The last stdout
line is the JSON record. task.hidden_dropout, task.attention_dropout and task.classifier_dropout
are honoured as mebert honours them.

--same_start pairs a run with mebert's of the same config and seed: the peer then takes mebert's
example order each epoch and mebert's initial classifier (drawn by JAX), so the two runs differ
only in their dropout masks and in float rounding. With task.hidden_dropout=0 and
task.attention_dropout=0 on both sides they differ in rounding alone, and their scores should
agree to that.
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mebert import host_memory
from mebert.tasks import batching, data as data_lib, inference


def define_flags():
  """Flags only when run as a program: tests import this module beside other modules' --config."""
  config_flags.DEFINE_config_file("config", None, "Fine-tuning config file.", lock_config=True)
  flags.DEFINE_string("json", "", "Where to write the JSON record (also printed).")
  flags.DEFINE_bool("same_start", False, "Take mebert's example order and initial classifier for "
                    "this config and seed (see the module docstring).")
  flags.mark_flags_as_required(["config"])


def dropout_kwargs(config) -> dict:
  """The config's dropout overrides (sources.dropout_overrides, named as ModelConfig fields) as
  Hugging Face config keys, through interop's key table; plus task.classifier_dropout when set."""
  from mebert.interop import hf_config
  from mebert.tasks import sources

  to_hf = {field: hf_key for hf_key, field in hf_config.HF_TO_MEBERT_KEYS.items()}
  out = {to_hf[field]: rate for field, rate in sources.dropout_overrides(config).items()}
  if float(config.task.classifier_dropout) >= 0:
    out["classifier_dropout"] = float(config.task.classifier_dropout)
  return out


def mebert_initial_classifier(config, labels) -> tuple[np.ndarray, np.ndarray]:
  """(kernel [H, C], bias [C]): the classifier `python -m mebert.train` starts from with this config
  and seed, initialised as its FineTuning does (jitted init, key(seed, impl="rbg"))."""
  import flax.linen as nn
  import jax

  from mebert.tasks import sources

  rt = inference.Runtime(config, sources.source_model_config(config), config.task.kind, labels)
  with rt.sharding_context():
    params = jax.jit(lambda key: nn.unbox(rt.init_params(key)))(
        jax.random.key(int(config.seed), impl="rbg"))
  head = jax.device_get(params["classifier"])
  return np.asarray(head["kernel"]), np.asarray(head["bias"])


def epoch_order(n: int, config, epoch: int, rng: np.random.Generator,
                same_start: bool) -> np.ndarray:
  """The examples' order in an epoch: mebert's with --same_start (packed batches take it 32 at a
  time, as the peer does), else a permutation from the peer's own generator."""
  if same_start:
    return batching.epoch_order(n, int(config.seed), epoch)
  return rng.permutation(n)


def _padded(enc: batching.Encoded, rows: np.ndarray, kind: str, pad_id: int, torch,
            with_labels: bool = True) -> dict:
  """Rows padded to their longest (Hugging Face's DataCollatorWithPadding); -100 = ignored tag."""
  length = int(enc.lengths[rows].max())
  ids = np.full((len(rows), length), pad_id, np.int64)
  types = np.zeros_like(ids)
  mask = np.zeros_like(ids)
  token_task = kind == "token_classification"
  labels = np.full((len(rows), length), -100, np.int64) if token_task and with_labels else None
  for j, r in enumerate(rows):
    n = int(enc.lengths[r])
    ids[j, :n], types[j, :n], mask[j, :n] = enc.input_ids[r], enc.token_type_ids[r], 1
    if labels is not None:
      labels[j, :n] = np.where(enc.labels[r] >= 0, enc.labels[r], -100)
  batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
  if with_labels and labels is None:
    labels = np.asarray(enc.labels[rows])
    labels = labels.astype(np.float32 if kind == "regression" else np.int64)
  if with_labels:
    batch["labels"] = labels
  return {k: torch.from_numpy(v) for k, v in batch.items()}


def _predict(model, enc: batching.Encoded, kind: str, labels, pad_id: int, batch_size: int, torch,
             truncated_tag: str):
  """Outputs in mebert's per-example form, so inference.score applies unchanged."""
  order = np.argsort(enc.lengths, kind="stable")
  out = [None] * len(enc) if kind == "token_classification" else None
  model.eval()
  with torch.no_grad():
    for start in range(0, len(order), batch_size):
      rows = order[start:start + batch_size]
      logits = model(**_padded(enc, rows, kind, pad_id, torch, with_labels=False)).logits.float()
      if kind == "regression":
        result = logits[..., 0].numpy()
      else:
        result = torch.softmax(logits, -1).numpy()
      if kind != "token_classification":
        if out is None:
          out = np.zeros((len(enc),) + result.shape[1:], np.float32)
        out[rows] = result
        continue
      for j, r in enumerate(rows):
        out[r] = inference.word_probs(result[j], enc.word_ids[r], int(enc.num_words[r]), labels,
                                       truncated_tag)
  return out


def run(config, same_start: bool = False) -> dict:
  import torch
  import transformers

  kind = config.task.kind
  folder = config.init.hf
  if not folder:
    raise ValueError("the PyTorch peer needs config.init.hf (a Hugging Face folder)")
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(int(config.seed))
  train_ex, dev_ex = inference.dataset_splits(config)
  labels = [str(x) for x in config.task.labels] or data_lib.infer_labels(train_ex, kind)
  tokenizer = batching.TaskTokenizer(batching.tokenizer_path(folder), bool(config.data.lowercase))
  seq_len = int(config.data.seq_len)
  enc_train = batching.encode_examples(train_ex, tokenizer, kind, labels, seq_len)
  enc_dev = batching.encode_examples(dev_ex, tokenizer, kind, labels, seq_len)

  num_labels = 1 if kind == "regression" else len(labels)
  cls = (transformers.BertForTokenClassification if kind == "token_classification"
         else transformers.BertForSequenceClassification)
  model = cls.from_pretrained(folder, num_labels=num_labels,
                              problem_type="regression" if kind == "regression" else None,
                              **dropout_kwargs(config))
  if same_start:
    kernel, bias = mebert_initial_classifier(config, labels)
    with torch.no_grad():
      model.classifier.weight.copy_(torch.from_numpy(kernel.T))
      model.classifier.bias.copy_(torch.from_numpy(bias))
  train = config.train
  batch_size = int(train.batch_size)
  per_epoch = math.ceil(len(enc_train) / batch_size)
  num_steps = int(train.num_steps) or max(1, math.ceil(float(train.num_epochs) * per_epoch))
  warmup = int(train.warmup_steps)
  warmup = warmup if warmup >= 0 else int(round(float(train.warmup_ratio) * num_steps))
  no_decay = lambda n: "LayerNorm" in n or n.endswith("bias")
  groups = [{"params": [p for n, p in model.named_parameters() if not no_decay(n)],
             "weight_decay": float(train.weight_decay)},
            {"params": [p for n, p in model.named_parameters() if no_decay(n)],
             "weight_decay": 0.0}]
  opt = torch.optim.AdamW(groups, lr=float(train.learning_rate), betas=(train.b1, train.b2),
                          eps=float(train.eps))
  sched = transformers.get_linear_schedule_with_warmup(opt, warmup, num_steps)
  params = [p for g in groups for p in g["params"]]

  model.train()
  rng = np.random.default_rng(int(config.seed))
  step, train_s, slots, real, epoch = 0, 0.0, 0, 0, 0
  while step < num_steps:
    order = epoch_order(len(enc_train), config, epoch, rng, same_start)
    epoch += 1
    for start in range(0, len(order), batch_size):
      if step >= num_steps:
        break
      rows = order[start:start + batch_size]
      t = time.perf_counter()
      batch = _padded(enc_train, rows, kind, tokenizer.pad_id, torch)
      loss = model(**batch).loss
      loss.backward()
      if float(train.clip_grad_norm) > 0:
        torch.nn.utils.clip_grad_norm_(params, float(train.clip_grad_norm))
      opt.step()
      sched.step()
      opt.zero_grad(set_to_none=True)
      train_s += time.perf_counter() - t
      slots += batch["input_ids"].numel()
      real += int(batch["attention_mask"].sum())
      step += 1
      if step % int(train.log_every) == 0:
        print(f"step {step}/{num_steps} loss={loss.item():.4f} {real / train_s:.0f} real tok/s",
              flush=True)
  t = time.perf_counter()
  outputs = _predict(model, enc_dev, kind, labels, tokenizer.pad_id, int(config.eval.batch_size),
                     torch, config.task.truncated_tag)
  result = inference.score(kind, labels, outputs, dev_ex, config.task.positive_label)
  return {**result, "eval_time_s": time.perf_counter() - t, "framework": "transformers (PyTorch)",
          "torch": torch.__version__, "transformers": transformers.__version__,
          "threads": torch.get_num_threads(), "num_steps": num_steps, "train_time_s": train_s,
          "train_tokens_per_s": slots / train_s, "train_real_tokens_per_s": real / train_s,
          "padding_fraction": 1.0 - real / slots, "num_train_examples": len(enc_train),
          "num_eval_examples": len(enc_dev)}


def main(argv):
  del argv
  host_memory.configure()  # before JAX starts: the opt-in host tuning (mebert/host_memory.py)
  record = run(flags.FLAGS.config, flags.FLAGS.same_start)
  line = json.dumps(record, sort_keys=True, default=str)
  if flags.FLAGS.json:
    with open(flags.FLAGS.json, "w") as f:
      f.write(line + "\n")
  print(line)


if __name__ == "__main__":
  define_flags()
  app.run(main)
