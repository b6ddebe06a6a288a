"""The PyTorch peer for fine-tuning: Hugging Face transformers on the same split and recipe as mebert.

  python -m mebert.bench.finetune_peer --config=configs/finetune/sst2.py:GLUE/SST-2 --json=peer_sst2.json \
      [--config.train.num_epochs=2 ...] [--report_offset=0]

Reads the config exactly as `python -m mebert.train` does (same files, same held-out split, same
labels, same WordPiece ids through mebert's tokenizer), then trains `BertForSequenceClassification`
/ `BertForTokenClassification` from config.init.hf the way a Hugging Face user would: random order
each epoch, dynamic padding (each batch padded to its longest row), AdamW with the config's rate,
betas, eps and weight decay (not on biases and LayerNorm), global-norm clipping, warmup then linear
decay, fp32, all CPU threads. Training time excludes tokenization and evaluation, as mebert's
`train_time_s` does. The last stdout line is the JSON record. task.hidden_dropout,
task.attention_dropout and task.classifier_dropout are honoured as mebert honours them.

Selection, as mebert's: it evaluates on the dev split at mebert's cadence (eval.every_steps, else
once an epoch, and at the last step), keeps the weights of the best evaluation by
early_stopping.metric (its mode, min_delta) and stops after early_stopping.patience evaluations
without improvement. The record's top-level scores are the last step's (as before); `best` holds
the selected evaluation and its step, as mebert's eval_results.json does. With
data.holdout_offset > 0 the dev split is a selection split; --report_offset=0 then also scores
the selected and the last weights on the split at that offset (the evaluation split the
selection never saw), under `report_split`. mebert.bench.finetune_compare runs both sides so.

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
from mebert.train.selection import Selection


def define_flags():
  """Flags only when run as a program: tests import this module beside other modules' --config."""
  config_flags.DEFINE_config_file("config", None, "Fine-tuning config file.", lock_config=True)
  flags.DEFINE_string("json", "", "Where to write the JSON record (also printed).")
  flags.DEFINE_bool("same_start", False, "Take mebert's example order and initial classifier for "
                    "this config and seed (see the module docstring).")
  flags.DEFINE_float("report_offset", None, "With data.holdout_offset > 0: also score the selected "
                     "and the last weights on the held-out split at this offset.")
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


def run(config, same_start: bool = False, report_offset: float | None = None) -> dict:
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

  evaluate = lambda enc, ex: _score(model, enc, ex, kind, labels, tokenizer.pad_id, config, torch)
  per_epoch = math.ceil(len(enc_train) / batch_size)
  eval_every = int(config.eval.every_steps) or per_epoch
  stopper = Selection.from_config(config.early_stopping)
  best_state, last, eval_s = None, None, 0.0
  model.train()
  rng = np.random.default_rng(int(config.seed))
  step, train_s, slots, real, epoch = 0, 0.0, 0, 0, 0
  while step < num_steps and not stopper.stopped:
    order = epoch_order(len(enc_train), config, epoch, rng, same_start)
    epoch += 1
    for start in range(0, len(order), batch_size):
      if step >= num_steps or stopper.stopped:
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
      if step % eval_every == 0 or step == num_steps:
        t = time.perf_counter()
        last = {**evaluate(enc_dev, dev_ex), "step": step}
        eval_s += time.perf_counter() - t
        if stopper.update(step, last):
          best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        print(f"eval step {step}: {stopper.metric}={last[stopper.metric]:.4f} (best "
              f"{abs(stopper.best):.4f} at step {stopper.best_step})", flush=True)
        model.train()
  record = {**{k: v for k, v in last.items() if k != "step"}, "last_step": step,
            "best": {**stopper.best_metrics, "step": stopper.best_step},
            "selection": f"best {stopper.metric} ({stopper.mode}) on the dev split, evaluated "
                         f"every {eval_every} steps and at the last; patience {stopper.patience}",
            "stopped_early": stopper.stopped, "eval_time_s": eval_s,
            "framework": "transformers (PyTorch)", "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "num_steps": num_steps, "train_time_s": train_s,
            "train_tokens_per_s": slots / train_s, "train_real_tokens_per_s": real / train_s,
            "padding_fraction": 1.0 - real / slots, "num_train_examples": len(enc_train),
            "num_eval_examples": len(enc_dev)}
  if report_offset is not None:
    report_ex = report_split(config, report_offset)
    enc_report = batching.encode_examples(report_ex, tokenizer, kind, labels, seq_len)
    scores = {"last": evaluate(enc_report, report_ex)}
    model.load_state_dict(best_state)
    scores["best"] = evaluate(enc_report, report_ex)
    record["report_split"] = {**scores, "holdout_offset": report_offset,
                              "num_examples": len(report_ex)}
  return record


def report_split(config, offset: float) -> list:
  """The held-out split of data.train_files at `offset` (same fraction): where the selection,
  made on the config's own split at data.holdout_offset, is scored. The two must not overlap."""
  data = config.data
  fraction, selection = float(data.holdout_fraction), float(data.holdout_offset)
  if data.eval_files or fraction <= 0 or selection <= 0:
    raise ValueError("--report_offset needs a selection split: data.train_files held out at "
                     "data.holdout_offset > 0 (and no data.eval_files)")
  if abs(offset - selection) < fraction:
    raise ValueError(f"--report_offset={offset} overlaps the selection split at "
                     f"data.holdout_offset={selection} (fraction {fraction})")
  report = config.copy_and_resolve_references()
  report.data.holdout_offset = offset
  return inference.dataset_splits(report)[1]


def _score(model, enc, examples, kind, labels, pad_id, config, torch) -> dict:
  outputs = _predict(model, enc, kind, labels, pad_id, int(config.eval.batch_size), torch,
                     config.task.truncated_tag)
  return inference.score(kind, labels, outputs, examples, config.task.positive_label)


def main(argv):
  del argv
  host_memory.configure()  # before JAX starts: the opt-in host tuning (mebert/host_memory.py)
  record = run(flags.FLAGS.config, flags.FLAGS.same_start, flags.FLAGS.report_offset)
  line = json.dumps(record, sort_keys=True, default=str)
  if flags.FLAGS.json:
    with open(flags.FLAGS.json, "w") as f:
      f.write(line + "\n")
  print(line)


if __name__ == "__main__":
  define_flags()
  app.run(main)
