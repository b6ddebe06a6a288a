"""Fine-tuning: initialise from a Hugging Face folder or a mebert workdir, train with warmup + linear
decay, evaluate on dev every N steps, stop early, keep the best checkpoint, and report.

  python -m mebert.train --config=configs/finetune/sst2.py --workdir=W              # train
  python -m mebert.train --config=... --workdir=W --mode=eval [--config.data.eval_files=F]
  python -m mebert.train --config=... --workdir=W1,W2 --mode=predict --input=F --output=O

A fine-tuning workdir is self-contained: checkpoints/<step>/ hold params and the resolved config
(model, task.labels, data.vocab -> WORKDIR/vocab/), best.json names the best step, and eval/predict
need nothing else. The same command again resumes from the latest checkpoint (same data order,
early-stopping state from early_stopping.json); a finished or stopped run only reports.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import time

import jax
import numpy as np

from mebert.compress import qat
from mebert.tasks import batching, data as data_lib, inference, optim, sources, steps
from mebert.tasks.defaults import TASK_KINDS
from mebert.train import checkpoints, init_from
from mebert.train.metric_writer import MetricWriter

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EarlyStopping:
  """Patience on one dev metric. `best` is the selection score: the metric, negated when lower is
  better, so higher is always better (as the Checkpointer's BestN wants)."""

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


def validate(config) -> None:
  kind = config.task.kind
  if kind not in TASK_KINDS:
    raise ValueError(f"task.kind={kind!r} is not one of {TASK_KINDS}")
  if kind == "token_classification" and config.task.text_pair_column:
    raise ValueError("token_classification takes one sequence of words: unset task.text_pair_column")
  qat.check_mode(config.train.quantize_aware)


def _write_json(path: str, record: dict) -> None:
  if jax.process_index() == 0:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
      json.dump(record, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def _numeric(d: dict) -> dict:
  return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _host(state):
  """The state as numpy for saving, on one host: Orbax then writes buffers as they are instead of
  compiling a slice per array and device to find replicas (seconds per save on 8 CPU devices)."""
  return jax.device_get(state) if jax.process_count() == 1 else state


class FineTuning:
  """One run in one workdir: data and labels, the model on its mesh, the compiled steps, the loop."""

  def __init__(self, config, workdir: str):
    validate(config)
    os.makedirs(workdir, exist_ok=True)
    self.config, self.workdir, self.kind = config, workdir, config.task.kind
    self.train_ex, self.dev_ex = inference.dataset_splits(config)
    if not self.train_ex:
      raise ValueError("data.train_files is empty")
    saved = sources.saved_config(workdir)
    if saved is not None:
      self.source = sources.resumed_source(saved, workdir)
      self.labels = self.source.labels
    else:
      self.source = sources.load_source(config)
      self.labels = ([str(x) for x in config.task.labels]
                     or data_lib.infer_labels(self.train_ex, self.kind))
      self.source.vocab = sources.copy_vocab(self.source.vocab, workdir)
    data_lib.check_labels(self.train_ex, self.labels, self.kind)
    data_lib.check_labels(self.dev_ex, self.labels, self.kind)
    self._encode()
    self._size()
    self.rt = inference.Runtime(config, self.source.model_config, self.kind, self.labels,
                                self.tokenizer.pad_id)
    qat.wrap_runtime(self.rt, config.train.quantize_aware)  # before the steps compile
    self.batch_size = self.rt.check_batch_size("train.batch_size", int(config.train.batch_size))
    self.eval_batch_size = self.rt.check_batch_size("eval.batch_size", int(config.eval.batch_size))
    accum = int(config.train.grad_accum_steps)
    if (self.batch_size // self.rt.dp) % accum:
      raise ValueError(f"train.batch_size={self.batch_size} over {self.rt.dp} devices is not "
                       f"divisible by train.grad_accum_steps={accum}")
    resolved = sources.resolve_config(config, self.source, self.labels, self.num_steps,
                                      self.warmup)
    self.config_json = json.loads(json.dumps(resolved.to_dict()))
    self.compiled = steps.compiled_steps(
        self.rt.train_model, self.rt.eval_model, self.kind, steps.optimizer_key(resolved),
        self.source.model_config.num_layers, accum, self.rt.mesh, self.rt.rules)

  def _encode(self):
    seq_len = int(self.config.data.seq_len)
    if seq_len > self.source.model_config.max_position_embeddings:
      raise ValueError(f"data.seq_len={seq_len} exceeds the model's max_position_embeddings="
                       f"{self.source.model_config.max_position_embeddings}")
    t = time.perf_counter()
    self.tokenizer = batching.TaskTokenizer(batching.tokenizer_path(self.source.vocab),
                                            self.source.lowercase)
    self.enc_train = batching.encode_examples(self.train_ex, self.tokenizer, self.kind,
                                              self.labels, seq_len)
    self.enc_dev = batching.encode_examples(self.dev_ex, self.tokenizer, self.kind, self.labels,
                                            seq_len, labeled=False)
    self.buckets = batching.bucket_lengths(seq_len, tuple(self.config.data.buckets))
    data = self.config.data
    self.pack = bool(data.pack)
    self._row_counts = None  # packed row count -> the count its steps run at (_epoch_batches)
    # Attention in a packed row costs pack_length per token, so by default rows are only as long
    # as the longest training example, rounded up to a multiple of 8 (SST-2: 72, not seq_len 128).
    longest = int(np.max(self.enc_train.lengths, initial=2))
    self.pack_length = int(data.pack_length) or -(-longest // 8) * 8
    if self.pack and self.pack_length < longest:
      raise ValueError(f"data.pack_length={self.pack_length} is shorter than the longest training "
                       f"example ({longest} tokens after truncation to data.seq_len={seq_len})")
    # Every example is at least [CLS] [SEP]: more segments than pack_length // 2 never fit a row.
    self.max_segments = int(data.pack_max_segments) or min(int(self.config.train.batch_size),
                                                             self.pack_length // 2)
    self._first_epoch_groups = None  # epoch 0's packing, done once (see _epoch_batches)
    if self.pack:
      self._first_epoch_groups = batching.epoch_row_groups(
          self.enc_train.lengths, int(self.config.train.batch_size), self.pack_length,
          self.max_segments, int(self.config.seed), 0)
      if not int(data.pack_max_segments):  # as many [CLS] slots as rows really use
        self.max_segments = batching.most_segments_per_row(self._first_epoch_groups)
    log.info("%d train / %d dev examples, %d labels, tokenized in %.1fs (%s)", len(self.train_ex),
             len(self.dev_ex), len(self.labels), time.perf_counter() - t, self.source.origin)

  def _size(self):
    """Steps per epoch (packed: ceil(examples / batch); bucketed: as dealt), total steps (train.num_steps or num_epochs), warmup."""
    train = self.config.train
    if self.pack:
      self.per_epoch = -(-len(self.enc_train) // int(train.batch_size))
    else:
      self.per_epoch = batching.steps_per_epoch(self.enc_train.lengths, self.buckets,
                                                int(train.batch_size))
    self.num_steps = int(train.num_steps) or max(1, math.ceil(float(train.num_epochs) * self.per_epoch))
    warmup = int(train.warmup_steps)
    self.warmup = warmup if warmup >= 0 else int(round(float(train.warmup_ratio) * self.num_steps))

  def _epoch_batches(self, epoch: int) -> list[tuple[np.ndarray, int]]:
    """(example indices, rows or padded length) per step; deterministic in (seed, epoch)."""
    seed = int(self.config.seed)
    if not self.pack:
      return batching.train_batches(self.enc_train.lengths, self.buckets, self.batch_size, seed,
                                    epoch)
    row_multiple = self.rt.dp * jax.process_count() * int(self.config.train.grad_accum_steps)
    packed = lambda e: batching.packed_train_batches(
        self.enc_train.lengths, self.batch_size, self.pack_length, self.max_segments, row_multiple,
        seed, e, groups=self._first_epoch_groups if e == 0 else None)
    batches = packed(epoch)
    if self._row_counts is None:  # fixed by the first epoch, so a resumed run compiles alike
      first = batches if epoch == 0 else packed(0)
      steps_per_count = collections.Counter(num_rows for _, num_rows in first)
      self._row_counts = batching.merge_row_counts(
          steps_per_count, float(self.config.data.compile_cost_tokens) / self.pack_length)
    return [(rows, self._row_counts.get(n, n)) for rows, n in batches]

  def _batch(self, rows: np.ndarray, size: int) -> dict:
    if self.pack:
      return batching.make_packed_batch(self.enc_train, rows, size, self.pack_length,
                                        self.max_segments, self.kind, self.tokenizer.pad_id)
    return batching.make_batch(self.enc_train, rows, size, self.kind, self.tokenizer.pad_id)

  def initial_state(self, ckpt):
    """(step, state, stopper): the latest checkpoint and early-stopping record, else a fresh
    initialisation with the source's encoder (and its classifier when its labels match)."""
    stopper = EarlyStopping.from_config(self.config.early_stopping)
    restored = ckpt.restore_latest(self.compiled.abstract_state, None)
    if restored is not None:
      step, state = restored
      record = os.path.join(self.workdir, "early_stopping.json")
      if os.path.isfile(record):
        with open(record) as f:
          stopper = EarlyStopping(**json.load(f))
      log.info("resumed %s at step %d", self.workdir, step)
      return step, state, stopper
    with self.rt.sharding_context():
      state = self.compiled.init(jax.random.key(int(self.config.seed), impl="rbg"))
    source = self.source
    if source.params is not None:
      src = {"bert": source.params["bert"]}
      if "classifier" in source.params and source.labels == self.labels:
        src["classifier"] = source.params["classifier"]  # same labels: keep the trained head
      params, _ = init_from.merge_params(state.params, src, origin=source.origin)
      state = state.replace(params=params)
    return 0, state, stopper

  def evaluate(self, params) -> dict:
    t = time.perf_counter()
    task = self.config.task
    outputs = inference.predict_probs(self.rt, params, self.enc_dev, self.eval_batch_size,
                                      self.buckets, task.truncated_tag)
    result = inference.score(self.kind, self.labels, outputs, self.dev_ex, task.positive_label)
    result["eval_time_s"] = time.perf_counter() - t
    return result

  def train(self) -> dict:
    """Trains to the end or until early stopping; returns the best evaluation and run facts."""
    config, workdir = self.config, self.workdir
    start = time.perf_counter()
    # The jitted step is shared by every run of this model and optimizer in the process (the
    # seeds of mebert.tasks.seeds), so its cache counts earlier runs' shapes too.
    cache_size = getattr(self.compiled.train_step, "_cache_size", None)  # shapes compiled
    compiled_before = int(cache_size()) if cache_size is not None else 0
    ckpt = checkpoints.Checkpointer(
        workdir, keep=int(config.checkpoint.keep),
        best_metric="selection_score" if config.checkpoint.keep_best else None,
        async_save=bool(config.checkpoint.async_save))
    try:
      step, state, stopper = self.initial_state(ckpt)
    except BaseException:
      ckpt.close()  # orbax's background cleanup must not outlive the interpreter (see trainer)
      raise
    writer = MetricWriter(workdir)
    seed = jax.device_put(np.int32(config.seed), self.compiled.replicated)
    eval_every = int(config.eval.every_steps) or self.per_epoch
    log_every = int(config.train.log_every)
    totals = {"train_s": 0.0, "tokens": 0.0, "real_tokens": 0.0}
    window, epoch, epoch_batches, window_start = [], -1, None, time.perf_counter()
    with self.rt.sharding_context():
      while step < self.num_steps and not stopper.stopped:
        if step // self.per_epoch != epoch:  # the epoch's batches, replayed exactly on resume
          epoch = step // self.per_epoch
          epoch_batches = self._epoch_batches(epoch)
        batch = self._batch(*epoch_batches[step % self.per_epoch])
        state, metrics = self.compiled.train_step(state, self.rt.global_batch(batch), seed)
        step += 1
        window.append(metrics)  # device arrays: fetched once per log window, no per-step sync
        eval_now = step % eval_every == 0 or step == self.num_steps
        if step % log_every == 0 or eval_now:  # a window never spans an eval: eval is not training
          in_row = self._log_window(writer, step, window, window_start, totals)
          if in_row >= int(config.train.max_nonfinite_in_row):
            ckpt.close()
            raise RuntimeError(f"{in_row} non-finite (NaN/Inf) steps in a row at step {step}; "
                               f"their updates were skipped; the last checkpoint is intact")
          window = []
          if eval_now:
            state = self._eval_and_save(ckpt, writer, stopper, step, state)
          window_start = time.perf_counter()
    ckpt.close()
    writer.close()
    final = {**(stopper.best_metrics or {}), "step": stopper.best_step, "last_step": step,
             "stopped_early": stopper.stopped, "num_train_examples": len(self.train_ex),
             "num_eval_examples": len(self.dev_ex), "steps_per_epoch": self.per_epoch,
             "labels": self.labels, "wall_time_s": time.perf_counter() - start}
    if cache_size is not None:
      final["train_step_compiles"] = int(cache_size()) - compiled_before
    if totals["train_s"]:
      final.update(train_time_s=totals["train_s"],
                   train_tokens_per_s=totals["tokens"] / totals["train_s"],
                   train_real_tokens_per_s=totals["real_tokens"] / totals["train_s"])
    _write_json(os.path.join(workdir, "eval_results.json"), final)
    return final

  def _log_window(self, writer, step, window: list[dict], window_start: float, totals) -> int:
    """Writes the window's train scalars; returns the non-finite-steps-in-a-row count."""
    fetched = jax.device_get(window)
    # Timed after the fetch: steps are dispatched asynchronously, so the clock at the last
    # dispatch undercounts the window by whatever the device had still queued.
    elapsed = time.perf_counter() - window_start
    host = {k: np.sum([m[k] for m in fetched], axis=0) for k in fetched[0]}
    totals["train_s"] += elapsed
    totals["tokens"] += float(host["tokens"])
    totals["real_tokens"] += float(host["real_tokens"])
    scalars = steps.summarize(host, self.kind)
    scalars.update(tokens_per_s=float(host["tokens"]) / elapsed,
                   real_tokens_per_s=float(host["real_tokens"]) / elapsed,
                   steps_per_s=float(host["steps"]) / elapsed, epoch=step / self.per_epoch)
    writer.write_scalars(step, scalars)
    log.info("step %d/%d %s", step, self.num_steps,
             " ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
    return int(fetched[-1]["nonfinite_in_row"])

  def _eval_and_save(self, ckpt, writer, stopper: EarlyStopping, step: int, state):
    result = self.evaluate(state.params)
    writer.write_scalars(step, _numeric(result), prefix="eval")
    improved = stopper.update(step, result)
    log.info("eval step %d: %s=%.4f (best %.4f at step %d)%s", step, stopper.metric,
             result[stopper.metric], abs(stopper.best), stopper.best_step,
             "; stopping early" if stopper.stopped else "")
    plateau = self.config.reduce_on_plateau
    if plateau.enabled:  # lower is better for the plateau rule
      opt_state, scale = optim.step_plateau(state.opt_state, plateau, -stopper.score(result))
      state = state.replace(opt_state=opt_state)
      writer.write_scalars(step, {"lr_scale": scale}, prefix="eval")
    # Metrics only on improvements: BestN then keeps the first step that reached the best score
    # (as best.json says), never a later tie; LatestN keeps the resume point.
    metrics = {"selection_score": stopper.best, **_numeric(result)} if improved else None
    ckpt.save(step, _host(state), None, self.config_json, metrics=metrics, force=True)
    _write_json(os.path.join(self.workdir, "early_stopping.json"), dataclasses.asdict(stopper))
    if improved:
      _write_json(os.path.join(self.workdir, "best.json"),
                  {"step": step, "metric": stopper.metric, "metrics": result})
    return state


def train_and_evaluate(config, workdir: str) -> dict:
  """Fine-tunes (or resumes); returns the dev metrics of the kept (best, else last) checkpoint."""
  return FineTuning(config, workdir).train()


def run(config, workdir: str, mode: str, *, step: int | None = None, input_path: str | None = None,
        output_path: str | None = None) -> dict:
  """The entrypoint's dispatch for configs with a `task` section. workdir may list several
  (comma-separated, each optionally @STEP) checkpoints for eval and predict: an ensemble."""
  validate(config)
  workdirs = [w for w in workdir.split(",") if w]
  if mode == "train":
    if len(workdirs) != 1:
      raise ValueError("--mode=train takes one --workdir")
    return train_and_evaluate(config, workdirs[0])
  if mode == "eval":
    return inference.evaluate(config, workdirs, step, input_path)
  if mode == "predict":
    return inference.predict(config, workdirs, input_path, output_path, step)
  raise ValueError(f"--mode={mode} is not supported for fine-tuning configs (train, eval, predict)")
