"""Model runtime (mesh, shardings, jitted predict), probabilities -> metrics, fine-tuned
checkpoints as ensemble members, and the eval/predict modes.

Predictions are probabilities per example ([C] for classification, a score for regression, [words,
C] for token tasks, read at each word's first piece), so members that differ in tokenizer still
average: the ensemble is the mean of the members' probabilities (scores for regression).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from mebert.model.config import ModelConfig
from mebert.parallel import mesh as mesh_lib
from mebert.tasks import batching, data as data_lib, glue, holdout, metrics as metrics_lib, steps
from mebert.tasks.model import BertForTask, num_outputs

log = logging.getLogger(__name__)


class Runtime:
  """Mesh, logical rules, train/eval models and the parameter shardings of one model."""

  def __init__(self, config, model_config: ModelConfig, kind: str, labels: list[str],
               pad_id: int = 0):
    self.config, self.model_config, self.kind, self.labels = config, model_config, kind, labels
    self.pad_id = pad_id
    self.mesh = mesh_lib.make_mesh(config.mesh)
    self.rules = mesh_lib.rules_from_config(config.mesh)
    n = num_outputs(kind, labels)
    dropout = float(config.task.classifier_dropout)
    self.train_model = BertForTask(model_config, kind, n, dropout, deterministic=False)
    self.eval_model = BertForTask(model_config, kind, n, dropout, deterministic=True)
    self.batch_sharding = mesh_lib.batch_sharding(self.mesh)
    self.dp = mesh_lib.data_parallel_size(self.mesh)

  def sharding_context(self):
    return mesh_lib.sharding_context(self.mesh, self.rules)

  def init_params(self, rng):
    ids = jnp.zeros((1, 8), jnp.int32)
    return self.eval_model.init(rng, ids, ids, jnp.ones_like(ids))["params"]

  def shardings_of(self, boxed):
    return mesh_lib.logical_shardings(boxed, self.mesh, self.rules)

  def param_shardings(self):
    with self.sharding_context():
      return self.shardings_of(jax.eval_shape(self.init_params, jax.random.key(0)))

  def global_batch(self, batch: dict) -> dict:
    """Each process feeds its contiguous share of the rows (all of them on one host)."""
    p, i = jax.process_count(), jax.process_index()
    size = len(batch["weights"])
    local = {k: v[i * size // p:(i + 1) * size // p] for k, v in batch.items()}
    return mesh_lib.global_batch(local, self.mesh)

  @functools.cached_property
  def predict_fn(self):
    return _predict_fn(self.eval_model, self.kind, self.mesh, self.rules)

  def check_batch_size(self, key: str, size: int) -> int:
    if size <= 0 or size % (self.dp * jax.process_count()):
      raise ValueError(f"{key}={size} is not divisible by the data-parallel size {self.dp} "
                       f"(mesh.data*mesh.fsdp) times the {jax.process_count()} processes")
    return size


@functools.lru_cache(maxsize=8)
def _predict_fn(model: BertForTask, kind: str, mesh, rules):
  """One jitted predict per (model, mesh): eval, predict and ensemble members of the same
  architecture share its compiled buckets."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *[jnp.zeros((1, 8), jnp.int32)] * 3))
    shardings = mesh_lib.logical_shardings(boxed["params"], mesh, rules)
  fn = functools.partial(steps.predict_step, model=model, kind=kind)
  return jax.jit(fn, in_shardings=(shardings, mesh_lib.batch_sharding(mesh)))



def _gather(x) -> np.ndarray:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def predict_probs(rt: Runtime, params, enc: batching.Encoded, batch_size: int, buckets,
                  truncated_tag: str = "O"):
  """Per-example outputs in input order: [N, C] probabilities, [N] scores, or for token tasks a
  list of [num_words, C] arrays (words with no piece left after truncation: one-hot on
  truncated_tag)."""
  n = len(enc)
  token_task = rt.kind == "token_classification"
  plan = batching.eval_batches(enc.lengths, buckets, batch_size)
  with rt.sharding_context():  # dispatch every batch, then fetch: the host never waits in between
    pending = [rt.predict_fn(params, rt.global_batch(
        batching.make_batch(enc, rows, length, rt.kind, rt.pad_id))) for rows, length in plan]
  out = [None] * n if token_task else None
  for (rows, _), device_result in zip(plan, pending):
    result, real = _gather(device_result), rows >= 0
    if not token_task:
      if out is None:
        out = np.zeros((n,) + result.shape[1:], np.float32)
      out[rows[real]] = result[real]
      continue
    for j in np.flatnonzero(real):
      out[rows[j]] = word_probs(result[j], enc.word_ids[rows[j]], int(enc.num_words[rows[j]]),
                                 rt.labels, truncated_tag)
  return out


def word_probs(probs_LxC, word_ids, num_words: int, labels, truncated_tag: str) -> np.ndarray:
  fallback = np.zeros(len(labels), np.float32)
  fallback[labels.index(truncated_tag) if truncated_tag in labels else 0] = 1.0
  words = np.tile(fallback, (num_words, 1))
  first = np.r_[True, word_ids[1:] != word_ids[:-1]] & (word_ids >= 0)
  positions = np.flatnonzero(first)
  words[word_ids[positions]] = probs_LxC[positions]
  return words


def score(kind: str, labels: list[str], outputs, examples, positive_label: str = "") -> dict:
  """Metrics of predicted probabilities (scores) against the examples' labels, plus the loss."""
  if kind == "regression":
    y = np.array([float(ex.label) for ex in examples])
    return {**metrics_lib.regression_metrics(y, outputs), "loss": float(np.mean((outputs - y) ** 2))}
  eps = 1e-12
  if kind == "classification":
    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[str(ex.label)] for ex in examples])
    positive = index.get(positive_label, 1) if positive_label else 1
    result = metrics_lib.classification_metrics(y, outputs.argmax(-1), len(labels), positive)
    result["loss"] = float(-np.mean(np.log(outputs[np.arange(len(y)), y] + eps)))
    return result
  index = {label: i for i, label in enumerate(labels)}
  gold = [[str(t) for t in ex.label] for ex in examples]
  pred = [[labels[k] for k in p.argmax(-1)] for p in outputs]
  flat_gold = np.array([index[t] for g in gold for t in g])
  flat_probs = np.concatenate(outputs) if outputs else np.zeros((0, len(labels)))
  result = metrics_lib.token_metrics(gold, pred)
  result["loss"] = float(-np.mean(np.log(flat_probs[np.arange(len(flat_gold)), flat_gold] + eps)))
  return result


def average(outputs: list, kind: str):
  if kind == "token_classification":
    return [np.mean(parts, axis=0) for parts in zip(*outputs)]
  return np.mean(np.stack(outputs), axis=0)


# --- Fine-tuned checkpoints as (ensemble) members -------------------------------------------------


@dataclasses.dataclass
class Member:
  workdir: str
  step: int
  kind: str
  labels: list[str]
  runtime: Runtime
  params: object
  tokenizer: batching.TaskTokenizer
  seq_len: int

  def predict(self, examples, config):
    enc = batching.encode_examples(examples, self.tokenizer, self.kind, self.labels, self.seq_len,
                                   labeled=False)
    buckets = batching.bucket_lengths(self.seq_len, tuple(config.data.buckets))
    size = self.runtime.check_batch_size("eval.batch_size", int(config.eval.batch_size))
    return predict_probs(self.runtime, self.params, enc, size, buckets, config.task.truncated_tag)


def chosen_step(workdir: str, step: int | None) -> int | None:
  """--step, else the best step recorded by training (if still on disk), else the latest."""
  if step is not None:
    return step
  best = os.path.join(workdir, "best.json")
  if os.path.isfile(best):
    with open(best) as f:
      s = int(json.load(f)["step"])
    if os.path.isdir(os.path.join(workdir, "checkpoints", str(s))):
      return s
    log.warning("%s: best step %d is not on disk; using the latest", workdir, s)
  return None


def load_member(config, workdir: str, step: int | None = None) -> Member:
  from mebert.model.layout import normalize_params
  from mebert.train.checkpoints import restore_params_and_step

  params, saved, restored = restore_params_and_step(workdir, chosen_step(workdir, step))
  task = saved.get("task") or {}
  if task.get("kind") not in ("classification", "regression", "token_classification"):
    raise ValueError(f"{workdir}: checkpoint step {restored} is not a fine-tuned model "
                     f"(its config has no task.kind)")
  labels = [str(x) for x in task.get("labels") or []]
  params = normalize_params(params)
  params.pop("cls", None)
  table = params["bert"]["embeddings"]["word_embeddings"]["embedding"]
  model_config = ModelConfig.from_dict(saved["model"], vocab_size=int(table.shape[0])).replace(
      scan_layers=False,  # normalize_params unrolled any scanned layers
      **{k: config.model[k] for k in ("dtype", "attention_backend", "remat_policy")
         if k in config.model})  # runtime keys: the command line's (mebert.tasks.run_config)
  from mebert.tasks.sources import saved_vocab

  data = saved.get("data") or {}
  tokenizer = batching.TaskTokenizer(saved_vocab(saved, workdir), bool(data.get("lowercase", True)))
  rt = Runtime(config, model_config, task["kind"], labels, tokenizer.pad_id)
  params = jax.device_put(jax.tree.map(lambda x: np.asarray(x, model_config.storage_dtype), params),
                          rt.param_shardings())
  if str(config.eval.get("quantize", "none")) != "none":  # int8 weights: mebert.tasks.quantized
    from mebert.tasks.quantized import quantize_task_runtime

    params = quantize_task_runtime(rt, params, str(config.eval.quantize), workdir)
  seq_len = int(data.get("seq_len", config.data.seq_len))  # the length it was trained at
  return Member(workdir, int(restored), task["kind"], labels, rt, params, tokenizer, seq_len)


def load_members(config, workdirs: list[str], step: int | None) -> list[Member]:
  """Each entry is a workdir or WORKDIR@STEP (e.g. two checkpoints of one run as an ensemble)."""
  members = []
  for entry in workdirs:
    w, at, s = entry.rpartition("@") if "@" in entry else (entry, "", "")
    members.append(load_member(config, w if at else entry, int(s) if at else step))
  for m in members[1:]:
    if (m.kind, m.labels) != (members[0].kind, members[0].labels):
      raise ValueError(f"ensemble members disagree: {members[0].workdir} is {members[0].kind} "
                       f"{members[0].labels}, {m.workdir} is {m.kind} {m.labels}")
  if members[0].kind != config.task.kind:
    raise ValueError(f"{members[0].workdir} is a {members[0].kind} model but the config's "
                     f"task.kind is {config.task.kind}")
  return members


NO_DATA = ("no training data (data.train_files is empty): give a GLUE folder "
           "(--config=configs/finetune/TASK.py:/path/to/glue/TASK), a TFDS dataset prepared as "
           "array_record (--config=configs/finetune/TASK.py:tfds), or files "
           "(--config.data.train_files=train.tsv [--config.data.eval_files=dev.tsv])")


def dataset_splits(config, need_train: bool = True):
  """(train examples, dev examples): data.eval_files, else a held-out part of data.train_files.
  Training and --mode=eval call this alike, so eval sees exactly the split training held out."""
  task, data = config.task, config.data
  if not data.train_files and (need_train or not data.eval_files):
    raise ValueError(NO_DATA)
  train = []
  if data.train_files and (need_train or not data.eval_files):
    train = data_lib.read_examples(data.train_files, task, data, limit=int(data.max_train_examples))
  if data.eval_files:
    dev = data_lib.read_examples(data.eval_files, task, data, limit=int(data.max_eval_examples))
    return train, dev
  if float(data.holdout_fraction) <= 0:
    raise ValueError("no dev data: set data.eval_files, or data.holdout_fraction > 0 to hold out "
                     f"part of data.train_files={data.train_files}")
  train, dev = holdout.holdout_split(train, float(data.holdout_fraction),
                                     float(data.holdout_offset), str(data.holdout_group))
  return train, dev[:int(data.max_eval_examples)] if int(data.max_eval_examples) > 0 else dev


def ensemble_table(names: list[str], member_metrics: list[dict], ensemble: dict) -> tuple[str, dict]:
  """A markdown table of members, their mean, the ensemble, and its gains; and the gains."""
  keys = [k for k in ensemble if k not in ("gold_entities", "predicted_entities")]
  mean = {k: float(np.mean([m[k] for m in member_metrics])) for k in keys}
  lower_better = {"loss", "mse"}
  best = {k: (min if k in lower_better else max)(m[k] for m in member_metrics) for k in keys}
  gain_mean = {k: ensemble[k] - mean[k] for k in keys}
  gain_best = {k: ensemble[k] - best[k] for k in keys}
  rows = [("| model | " + " | ".join(keys) + " |"), "|---" * (len(keys) + 1) + "|"]
  fmt = lambda d: " | ".join(f"{d[k]:.4f}" for k in keys)
  rows += [f"| {n} | {fmt(m)} |" for n, m in zip(names, member_metrics)]
  rows += [f"| mean of {len(names)} members | {fmt(mean)} |", f"| ensemble | {fmt(ensemble)} |",
           f"| gain over mean member | {fmt(gain_mean)} |",
           f"| gain over best member | {fmt(gain_best)} |"]
  return "\n".join(rows), {"over_mean_member": gain_mean, "over_best_member": gain_best,
                           "member_mean": mean}


def _scores(members: list[Member], examples, config) -> dict:
  """Metrics of one checkpoint on labelled examples, or of each member and their ensemble."""
  kind, labels = members[0].kind, members[0].labels
  data_lib.check_labels(examples, labels, kind)
  outputs = [m.predict(examples, config) for m in members]
  results = [score(kind, labels, o, examples, config.task.positive_label) for o in outputs]
  if len(members) == 1:
    return {**results[0], "step": members[0].step, "num_examples": len(examples)}
  ens = score(kind, labels, average(outputs, kind), examples, config.task.positive_label)
  names = [f"{m.workdir} (step {m.step})" for m in members]
  table, gains = ensemble_table(names, results, ens)
  log.info("ensemble of %d on %d examples:\n%s", len(members), len(examples), table)
  return {**ens, "num_examples": len(examples), "ensemble_size": len(members), "gain": gains,
          "members": [{"workdir": m.workdir, "step": m.step, **r} for m, r in zip(members, results)],
          "table": table}


def evaluate(config, workdirs: list[str], step: int | None = None,
             input_path: str | None = None) -> dict:
  """--mode=eval: metrics on --input (a labelled file) or on the dev set training used, plus
  each data.extra_eval set as NAME/metric (MNLI's mismatched dev)."""
  members = load_members(config, workdirs, step)
  if input_path:
    examples = data_lib.read_examples(input_path, config.task, config.data,
                                      limit=int(config.data.max_eval_examples))
    return _scores(members, examples, config)
  result = _scores(members, dataset_splits(config, need_train=False)[1], config)
  for name, spec in glue.parse_named(config.data.extra_eval, "data.extra_eval"):
    examples = data_lib.read_examples(spec, config.task, config.data,
                                      limit=int(config.data.max_eval_examples))
    extra = _scores(members, examples, config)
    result.update({f"{name}/{k}": v for k, v in extra.items()
                   if isinstance(v, (int, float)) and k != "step"})
  return result


def predict(config, workdirs: list[str], input_path: str | None, output_path: str | None,
            step: int | None = None) -> dict:
  """--mode=predict: labels with probabilities (or tags per input word) for every row of --input;
  without --input, a file OUTPUT/NAME.tsv per test set of data.test_files (GLUE tasks: the
  benchmark's submission files)."""
  sets = [] if input_path else glue.parse_named(config.data.test_files, "data.test_files")
  if not output_path or not (input_path or sets):
    raise ValueError("--mode=predict needs --input=FILE and --output=FILE, or --output=DIR alone "
                     "for the test sets of data.test_files (a GLUE folder's test.tsv)")
  members = load_members(config, workdirs, step)
  kind, labels = members[0].kind, members[0].labels
  out = {"ensemble_size": len(members), "steps": [m.step for m in members]}
  if input_path:
    examples = data_lib.read_examples(input_path, config.task, config.data, labeled=False)
    outputs = average([m.predict(examples, config) for m in members], kind)
    write_predictions(output_path, kind, labels, examples, outputs)
    return {"predictions": len(examples), "output": output_path, **out}
  glue_task = glue.task(config.task.glue) if config.task.glue else None
  task_cfg, data_cfg = (glue.test_reading(glue_task, config.task, config.data) if glue_task
                        else (config.task, config.data))
  written = {}
  for name, spec in sets:
    examples = data_lib.read_examples(spec, task_cfg, data_cfg, labeled=False)
    outputs = average([m.predict(examples, config) for m in members], kind)
    path = str(epath.Path(output_path) / f"{name}.tsv")
    if glue_task is not None:
      glue.write_submission(path, glue_task, labels, examples, outputs)
    else:
      write_predictions(path, kind, labels, examples, outputs)
    written[path] = len(examples)
  return {"predictions": written, "output": output_path, **out}


def write_predictions(path: str, kind: str, labels: list[str], examples, outputs) -> None:
  """JSONL (.jsonl/.json) or TSV (anything else); row i answers input example i. Token tasks: one
  tag per input word (JSONL "tokens"/"tags", TSV word<TAB>tag lines, blank line per sentence)."""
  jsonl = path.endswith((".jsonl", ".json"))
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  with epath.Path(path).open("w") as f:
    if not jsonl and kind == "classification":
      f.write("label\t" + "\t".join(f"prob_{label}" for label in labels) + "\n")
    elif not jsonl and kind == "regression":
      f.write("score\n")
    for ex, out in zip(examples, outputs):
      if kind == "token_classification":
        tags = [labels[k] for k in out.argmax(-1)]
        if jsonl:
          f.write(json.dumps({"tokens": ex.text, "tags": tags,
                              "probability": [round(float(p), 6) for p in out.max(-1)]},
                             ensure_ascii=False) + "\n")
        else:
          f.write("".join(f"{w}\t{t}\n" for w, t in zip(ex.text, tags)) + "\n")
      elif kind == "regression":
        f.write(json.dumps({"score": float(out), "text": ex.text, "text_pair": ex.pair},
                           ensure_ascii=False) + "\n" if jsonl else f"{float(out):.6f}\n")
      else:
        label = labels[int(out.argmax())]
        if jsonl:
          f.write(json.dumps({"label": label, "probabilities": {
              l: round(float(p), 6) for l, p in zip(labels, out)}, "text": ex.text,
              "text_pair": ex.pair}, ensure_ascii=False) + "\n")
        else:
          f.write(label + "\t" + "\t".join(f"{float(p):.6f}" for p in out) + "\n")
