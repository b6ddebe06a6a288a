"""Fine-tuning: initialise from a Hugging Face folder or a mebert workdir, train with warmup + linear
decay, evaluate on dev every N steps, stop early, keep the best checkpoint, and report.

  python -m mebert.train --config=configs/finetune/sst2.py --workdir=W              # train
  python -m mebert.train --config=... --workdir=W --mode=eval [--config.data.eval_files=F]
  python -m mebert.train --config=... --workdir=W1,W2 --mode=predict --input=F --output=O

A fine-tuning workdir is self-contained: checkpoints/<step>/ hold params and the resolved config
(model, task.labels, data.vocab -> WORKDIR/vocab/), best.json names the best step, and eval/predict
need nothing else. The same command again resumes from the latest checkpoint (same data order,
early-stopping state from early_stopping.json).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import time

import flax.linen as nn
import jax
import numpy as np
from ml_collections import config_dict

from mebert.model.config import ModelConfig
from mebert.tasks import batching, data as data_lib, inference, optim, steps
from mebert.tasks.defaults import TASK_KINDS
from mebert.train import checkpoints, init_from
from mebert.train.metric_writer import MetricWriter
from mebert.train.steps import TrainState

log = logging.getLogger(__name__)

# ModelConfig keys a config may set on top of an initialising model (numerics and memory only).
RUNTIME_KEYS = ("dtype", "param_dtype", "attention_backend", "remat_policy", "scan_layers")


@dataclasses.dataclass
class Source:
  model_config: ModelConfig
  vocab: str  # tokenizer file, copied into WORKDIR/vocab/
  lowercase: bool
  params: dict | None = None  # {"bert": ..., maybe "classifier"}; None = random init
  labels: list[str] | None = None  # the source classifier's labels, if it has one
  origin: str = "random init"


def _runtime(config) -> dict:
  return {k: config.model[k] for k in RUNTIME_KEYS}


def _copy_vocab(path: str, workdir: str) -> str:
  path = batching.tokenizer_path(path)
  target_dir = os.path.join(workdir, "vocab")
  os.makedirs(target_dir, exist_ok=True)
  target = os.path.join(target_dir, os.path.basename(path))
  if os.path.abspath(path) != os.path.abspath(target):
    shutil.copy(path, target)
    side = os.path.join(os.path.dirname(path), "tokenizer_config.json")  # vocab.txt's lowercasing
    if path.endswith(".txt") and os.path.isfile(side):
      shutil.copy(side, os.path.join(target_dir, "tokenizer_config.json"))
  return target


def load_source(config, workdir: str) -> Source:
  """The initialising model: init.hf, init.checkpoint, or config.model (random)."""
  lowercase = bool(config.data.lowercase)
  if config.init.hf and config.init.checkpoint:
    raise ValueError("set one of init.hf and init.checkpoint, not both")
  if config.init.hf:
    from mebert.interop.hf_import import load_hf_bert

    cfg, params, report = load_hf_bert(config.init.hf, parity=bool(config.init.hf_parity),
                                       heads=False, seed=int(config.seed), **_runtime(config))
    vocab = config.data.vocab or report.tokenizer
    if not vocab:
      raise ValueError(f"init.hf={config.init.hf} has no tokenizer; set data.vocab")
    return Source(cfg, vocab, lowercase, params, report.labels, f"init.hf={config.init.hf}")
  if config.init.checkpoint:
    from mebert.interop import hf_names
    from mebert.interop.hf_export import normalize_params

    src = config.init.checkpoint
    params, saved = checkpoints.restore_params(src)
    params = normalize_params(params)
    table = params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    cfg = ModelConfig.from_dict(saved["model"], vocab_size=int(table.shape[0])).replace(
        **_runtime(config))
    if cfg.scan_layers:
      params = hf_names.stack_layers(params, cfg.num_layers)
    data = saved.get("data") or {}
    vocab = config.data.vocab or data.get("vocab") or os.path.join(src, "vocab")
    labels = (saved.get("task") or {}).get("labels")
    return Source(cfg, vocab, bool(data.get("lowercase", lowercase)), params, labels,
                  f"init.checkpoint={src}")
  if not config.data.vocab:
    raise ValueError("random init needs data.vocab (or set init.hf / init.checkpoint)")
  tokenizer = batching.TaskTokenizer(batching.tokenizer_path(config.data.vocab), lowercase)
  cfg = ModelConfig.from_dict(config.model, vocab_size=tokenizer.vocab_size)
  return Source(cfg, config.data.vocab, lowercase)


@dataclasses.dataclass
class EarlyStopping:
  metric: str
  mode: str
  patience: int
  min_delta: float
  best: float | None = None
  best_step: int = 0
  best_metrics: dict | None = None
  bad_evals: int = 0
  stopped: bool = False

  def score(self, metrics: dict) -> float:
    """The selection score: the metric, negated when lower is better (higher is always better)."""
    if self.metric not in metrics:
      raise ValueError(f"early_stopping.metric={self.metric!r} is not an eval metric; available: "
                       f"{sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))}")
    return float(metrics[self.metric]) * (1.0 if self.mode == "max" else -1.0)

  def update(self, step: int, metrics: dict) -> bool:
    s = self.score(metrics)
    improved = self.best is None or s > self.best + self.min_delta
    if improved:
      self.best, self.best_step, self.best_metrics, self.bad_evals = s, step, metrics, 0
    else:
      self.bad_evals += 1
      self.stopped = self.patience > 0 and self.bad_evals >= self.patience
    return improved

  @classmethod
  def from_config(cls, cfg) -> "EarlyStopping":
    mode = cfg.mode if cfg.mode != "auto" else ("min" if cfg.metric in ("loss", "mse") else "max")
    if mode not in ("min", "max"):
      raise ValueError(f"early_stopping.mode={cfg.mode!r} is not one of max, min, auto")
    return cls(cfg.metric, mode, int(cfg.patience), float(cfg.min_delta))


def _write_json(path: str, record: dict) -> None:
  if jax.process_index() == 0:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
      json.dump(record, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def _numeric(d: dict) -> dict:
  return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _optimizer_key(resolved) -> str:
  """What the optimizer and schedule depend on, as a hashable string."""
  train = {k: v for k, v in resolved.train.to_dict().items() if k in _OPTIMIZER_KEYS}
  return json.dumps({"train": train, "reduce_on_plateau": resolved.reduce_on_plateau.to_dict()},
                    sort_keys=True)


_OPTIMIZER_KEYS = ("optimizer", "learning_rate", "num_steps", "warmup_steps", "schedule",
                   "end_learning_rate_ratio", "decay_power", "weight_decay", "b1", "b2", "eps",
                   "clip_grad_norm", "layer_decay")


@dataclasses.dataclass(frozen=True)
class CompiledSteps:
  tx: object
  state_shardings: object
  abstract_state: object  # ShapeDtypeStructs with shardings: the restore target
  replicated: object
  init: object  # jitted: rng key -> TrainState
  train_step: object  # jitted: (state, batch, seed) -> (state, metric sums), state donated


@functools.lru_cache(maxsize=4)
def compiled_steps(train_model, eval_model, kind: str, optimizer_key: str, num_layers: int,
                   accum: int, mesh, rules) -> CompiledSteps:
  """The jitted init and train step of one (model, optimizer, mesh), shared by every run with the
  same ones: seeds, or single-sentence and pair tasks of the same shape, compile once per bucket."""
  from jax.sharding import NamedSharding, PartitionSpec

  from mebert.parallel import mesh as mesh_lib

  resolved = config_dict.ConfigDict(json.loads(optimizer_key))
  tx = optim.make_optimizer(resolved, num_layers)
  schedule = optim.base_optimizer.learning_rate_schedule(resolved.train)

  def init_state(rng):
    ids = jax.numpy.zeros((1, 8), jax.numpy.int32)
    params = eval_model.init(rng, ids, ids, jax.numpy.ones_like(ids))["params"]
    zero = lambda: jax.numpy.zeros((), jax.numpy.int32)  # distinct buffers: the state is donated
    return TrainState(step=zero(), params=params, opt_state=tx.init(params),
                      nonfinite_in_row=zero(), nonfinite_total=zero())

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init_state, jax.random.key(0, impl="rbg"))
    shardings = mesh_lib.logical_shardings(boxed, mesh, rules)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            mesh_lib.strip_boxes(boxed), shardings)
  replicated = NamedSharding(mesh, PartitionSpec())
  step_fn = functools.partial(steps.train_step, model=train_model, tx=tx, schedule=schedule,
                              kind=kind, grad_accum_steps=accum)
  train_step = jax.jit(step_fn, donate_argnums=0, out_shardings=(shardings, None),
                       in_shardings=(shardings, mesh_lib.batch_sharding(mesh), replicated))
  init = jax.jit(lambda rng: nn.unbox(init_state(rng)), out_shardings=shardings)
  return CompiledSteps(tx, shardings, abstract, replicated, init, train_step)


def _host(state):
  """The state as numpy for saving, on one host: Orbax then writes buffers as they are instead of
  compiling a slice per array and device to find replicas (seconds per save on 8 CPU devices)."""
  return jax.device_get(state) if jax.process_count() == 1 else state


def validate(config) -> None:
  kind = config.task.kind
  if kind not in TASK_KINDS:
    raise ValueError(f"task.kind={kind!r} is not one of {TASK_KINDS}")
  if kind == "token_classification" and config.task.text_pair_column:
    raise ValueError("token_classification takes one sequence of words: unset task.text_pair_column")


def _resolve(config, source: Source, labels: list[str], vocab: str, num_steps: int,
             warmup: int) -> config_dict.ConfigDict:
  """The config as run: what eval/predict and resumption read back from the checkpoint."""
  resolved = config_dict.ConfigDict(config.to_dict())
  resolved.task.labels = list(labels)
  resolved.model = config_dict.ConfigDict(dataclasses.asdict(source.model_config))
  resolved.data.vocab = vocab
  resolved.data.lowercase = source.lowercase
  resolved.train.num_steps = num_steps
  resolved.train.warmup_steps = warmup
  return resolved


def _saved_config(workdir: str) -> dict | None:
  """The resolved config of this workdir's latest checkpoint (a resumed run keeps its labels,
  model and vocabulary), or None for a fresh run."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return None
  try:
    _, saved = checkpoints.restore_params(workdir)
  except checkpoints.CheckpointError:
    return None
  return saved


def train_and_evaluate(config, workdir: str) -> dict:
  """Fine-tunes; returns the dev metrics of the kept (best, else last) checkpoint."""
  validate(config)
  os.makedirs(workdir, exist_ok=True)
  kind, task = config.task.kind, config.task
  train_ex, dev_ex = inference.dataset_splits(config)
  if not train_ex:
    raise ValueError("data.train_files is empty")
  saved = _saved_config(workdir)
  if saved is not None:
    labels = [str(x) for x in saved["task"]["labels"]]
    source = Source(ModelConfig.from_dict(saved["model"]), saved["data"]["vocab"],
                    bool(saved["data"]["lowercase"]), origin=f"resume {workdir}")
  else:
    source = load_source(config, workdir)
    labels = [str(x) for x in task.labels] or data_lib.infer_labels(train_ex, kind)
    source.vocab = _copy_vocab(source.vocab, workdir)
  data_lib.check_labels(train_ex, labels, kind)
  data_lib.check_labels(dev_ex, labels, kind)
  tokenizer = batching.TaskTokenizer(batching.tokenizer_path(source.vocab), source.lowercase)
  seq_len = int(config.data.seq_len)
  if seq_len > source.model_config.max_position_embeddings:
    raise ValueError(f"data.seq_len={seq_len} exceeds the model's max_position_embeddings="
                     f"{source.model_config.max_position_embeddings}")
  t0 = time.perf_counter()
  enc_train = batching.encode_examples(train_ex, tokenizer, kind, labels, seq_len)
  enc_dev = batching.encode_examples(dev_ex, tokenizer, kind, labels, seq_len, labeled=False)
  log.info("%d train / %d dev examples, %d labels, tokenized in %.1fs (%s)", len(train_ex),
           len(dev_ex), len(labels), time.perf_counter() - t0, source.origin)

  rt = inference.Runtime(config, source.model_config, kind, labels)
  rt.pad_id = tokenizer.pad_id
  batch_size = rt.check_batch_size("train.batch_size", int(config.train.batch_size))
  eval_batch_size = rt.check_batch_size("eval.batch_size", int(config.eval.batch_size))
  accum = int(config.train.grad_accum_steps)
  if (batch_size // rt.dp) % accum:
    raise ValueError(f"train.batch_size={batch_size} over {rt.dp} devices is not divisible by "
                     f"train.grad_accum_steps={accum}")
  buckets = batching.bucket_lengths(seq_len, tuple(config.data.buckets))
  per_epoch = batching.steps_per_epoch(enc_train.lengths, buckets, batch_size)
  num_steps = int(config.train.num_steps) or max(1, math.ceil(float(config.train.num_epochs) * per_epoch))
  warmup = int(config.train.warmup_steps)
  warmup = warmup if warmup >= 0 else int(round(float(config.train.warmup_ratio) * num_steps))
  resolved = _resolve(config, source, labels, source.vocab, num_steps, warmup)
  config_json = json.loads(json.dumps(resolved.to_dict()))
  compiled = compiled_steps(rt.train_model, rt.eval_model, kind, _optimizer_key(resolved),
                            source.model_config.num_layers, accum, rt.mesh, rt.rules)
  best_metric_key = "selection_score" if config.checkpoint.keep_best else None
  ckpt = checkpoints.Checkpointer(workdir, keep=int(config.checkpoint.keep),
                                  best_metric=best_metric_key,
                                  async_save=bool(config.checkpoint.async_save))
  stopper = EarlyStopping.from_config(config.early_stopping)
  restored = ckpt.restore_latest(compiled.abstract_state, None)
  if restored is not None:
    step, state = restored
    es_path = os.path.join(workdir, "early_stopping.json")
    if os.path.isfile(es_path):
      with open(es_path) as f:
        stopper = EarlyStopping(**json.load(f))
    log.info("resumed %s at step %d", workdir, step)
  else:
    step = 0
    with rt.sharding_context():
      state = compiled.init(jax.random.key(int(config.seed), impl="rbg"))  # rbg: cheap to compile
    if source.params is not None:
      src = {"bert": source.params["bert"]}
      if "classifier" in source.params and source.labels == labels:
        src["classifier"] = source.params["classifier"]  # same labels: keep the trained head
      params, _ = init_from.merge_params(state.params, src, origin=source.origin)
      state = state.replace(params=params)

  train_step = compiled.train_step
  seed = jax.device_put(np.int32(config.seed), compiled.replicated)
  eval_every = int(config.eval.every_steps) or per_epoch
  log_every = int(config.train.log_every)
  writer = MetricWriter(workdir)
  writer.write_text("config", json.dumps(config_json, indent=2))

  def evaluate(params, at_step) -> dict:
    t = time.perf_counter()
    outputs = inference.predict_probs(rt, params, enc_dev, eval_batch_size, buckets,
                                      task.truncated_tag)
    result = inference.score(kind, labels, outputs, dev_ex, task.positive_label)
    result["eval_time_s"] = time.perf_counter() - t
    writer.write_scalars(at_step, _numeric(result), prefix="eval")
    return result

  sums, epoch_batches, epoch = None, None, -1
  timer = {"train_s": 0.0, "tokens": 0.0, "real_tokens": 0.0, "start": time.perf_counter()}
  last_log = time.perf_counter()
  with rt.sharding_context():
    while step < num_steps and not stopper.stopped:
      if step // per_epoch != epoch:
        epoch = step // per_epoch
        epoch_batches = batching.train_batches(enc_train.lengths, buckets, batch_size,
                                               int(config.seed), epoch)
      rows, length = epoch_batches[step % per_epoch]
      batch = batching.make_batch(enc_train, rows, length, kind, tokenizer.pad_id)
      state, metrics = train_step(state, rt.global_batch(batch), seed)
      step += 1
      in_row = metrics.pop("nonfinite_in_row")
      sums = metrics if sums is None else jax.tree.map(np.add, sums, metrics)
      eval_now = step % eval_every == 0 or step == num_steps
      if step % log_every == 0 or eval_now:  # a window never spans an eval: eval is not train time
        host = jax.device_get(sums)
        elapsed = time.perf_counter() - last_log
        timer["train_s"] += elapsed
        timer["tokens"] += float(host["tokens"])
        timer["real_tokens"] += float(host["real_tokens"])
        scalars = steps.summarize(host, kind)
        scalars.update(tokens_per_s=float(host["tokens"]) / elapsed,
                       real_tokens_per_s=float(host["real_tokens"]) / elapsed,
                       steps_per_s=float(host["steps"]) / elapsed, epoch=step / per_epoch)
        writer.write_scalars(step, scalars)
        log.info("step %d/%d %s", step, num_steps,
                 " ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
        if int(jax.device_get(in_row)) >= int(config.train.max_nonfinite_in_row):
          ckpt.close()
          raise RuntimeError(f"{int(in_row)} non-finite steps in a row at step {step}; "
                             f"their updates were skipped")
        sums, last_log = None, time.perf_counter()
      if eval_now:
        result = evaluate(state.params, step)
        improved = stopper.update(step, result)
        log.info("eval step %d: %s=%.4f (best %.4f at step %d)%s", step, stopper.metric,
                 result[stopper.metric], abs(stopper.best), stopper.best_step,
                 "; stopping early" if stopper.stopped else "")
        if config.reduce_on_plateau.enabled:
          opt_state, lr_scale = optim.step_plateau(state.opt_state, config.reduce_on_plateau,
                                                   -stopper.score(result))
          state = state.replace(opt_state=opt_state)
          writer.write_scalars(step, {"lr_scale": lr_scale}, prefix="eval")
        # Metrics only on improvements: BestN then keeps the first step that reached the best
        # score (as best.json says), never a later tie; LatestN keeps the resume point.
        ckpt.save(step, _host(state), None, config_json, force=True,
                  metrics={"selection_score": stopper.best, **_numeric(result)} if improved else None)
        _write_json(os.path.join(workdir, "early_stopping.json"), dataclasses.asdict(stopper))
        if improved:
          _write_json(os.path.join(workdir, "best.json"),
                      {"step": step, "metric": stopper.metric, "metrics": result})
        last_log = time.perf_counter()
  ckpt.close()
  writer.close()
  best = stopper.best_metrics or {}
  final = {**best, "step": stopper.best_step, "last_step": step, "stopped_early": stopper.stopped,
           "num_train_examples": len(train_ex), "num_eval_examples": len(dev_ex),
           "steps_per_epoch": per_epoch, "labels": labels,
           "wall_time_s": time.perf_counter() - timer["start"]}
  cache_size = getattr(train_step, "_cache_size", None)  # compiled shapes: one per used bucket
  if cache_size is not None:
    final["train_step_compiles"] = int(cache_size())
  if timer["train_s"]:
    final.update(train_tokens_per_s=timer["tokens"] / timer["train_s"],
                 train_real_tokens_per_s=timer["real_tokens"] / timer["train_s"])
  _write_json(os.path.join(workdir, "eval_results.json"), final)
  return final


def run(config, workdir: str, mode: str, *, step: int | None = None, input_path: str | None = None,
        output_path: str | None = None) -> dict:
  """The entrypoint's dispatch for configs with a `task` section. workdir may list several
  (comma-separated) checkpoints for eval and predict: an ensemble."""
  validate(config)
  workdirs = [w for w in workdir.split(",") if w]
  if mode == "train":
    if len(workdirs) != 1:
      raise ValueError("--mode=train takes one --workdir")
    return train_and_evaluate(config, workdirs[0])
  if mode == "eval":
    return inference.evaluate(config, workdirs, step)
  if mode == "predict":
    return inference.predict(config, workdirs, input_path, output_path, step)
  raise ValueError(f"--mode={mode} is not supported for fine-tuning configs (train, eval, predict)")
