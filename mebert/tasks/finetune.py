"""Fine-tuning: initialise from a Hugging Face folder or a mebert workdir, train with warmup + linear
decay, evaluate on dev every N steps, stop early, keep the best checkpoint, and report.

  python -m mebert.train --config=configs/finetune/sst2.py:GLUE/SST-2 --workdir=W  # train
  python -m mebert.train --config=... --workdir=W --mode=eval [--config.data.eval_files=F]
  python -m mebert.train --config=... --workdir=W1,W2 --mode=predict --input=F --output=O

A fine-tuning workdir is self-contained: checkpoints/<step>/ hold params and the resolved config
(model, task.labels, data.vocab -> WORKDIR/vocab/), best.json names the best step, and eval/predict
need nothing else. The loop is mebert.train.loop's (progress bar, TensorBoard, metrics.jsonl,
non-finite stop, SIGTERM save, profiler, host-sync guard); what is fine-tuning's own lives here:
its batches (a pure function of seed and step), its step and metrics, its evaluation. The same
command again resumes from the latest checkpoint, bitwise as if never stopped (same batches, the
early-stopping state as of that checkpoint); a finished or stopped run only reports.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import time

import jax
import numpy as np

from mebert.model import qat
from mebert.parallel.prefetch import DevicePrefetcher
from mebert.tasks import batching, data as data_lib, inference, optim, quantized, sources, steps
from mebert.tasks.defaults import TASK_KINDS
from mebert.train import checkpoints, init_from, loop
from mebert.train import optimizer as base_optimizer
from mebert.train.records import write_json
from mebert.train.selection import Selection

log = logging.getLogger(__name__)


def validate(config) -> None:
  kind = config.task.kind
  if kind not in TASK_KINDS:
    raise ValueError(f"task.kind={kind!r} is not one of {TASK_KINDS}")
  if kind == "token_classification" and config.task.text_pair_column:
    raise ValueError("token_classification takes one sequence of words: unset task.text_pair_column")
  qat.check_mode(config.train.quantize_aware)


def _host(state):
  """The state as numpy for saving, on one host: Orbax then writes buffers as they are instead of
  compiling a slice per array and device to find replicas (seconds per save on 8 CPU devices)."""
  return jax.device_get(state) if jax.process_count() == 1 else state


class FineTuning(loop.Task):
  """One run in one workdir: data and labels, the model on its mesh, the compiled steps; the loop
  (mebert.train.loop) runs them."""

  name = "finetune"
  progress_keys = ("loss", "accuracy")

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
    quantized.wrap_runtime(self.rt, config.train.quantize_aware)  # before the steps compile
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
    self.warmup = base_optimizer.warmup_steps(train, self.num_steps)

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
    """(step, state, selection): the latest checkpoint and the early-stopping state as of it, else
    a fresh initialisation with the source's encoder (and its classifier when its labels match)."""
    selection = Selection.from_config(self.config.early_stopping)
    restored = ckpt.restore_latest(self.compiled.abstract_state, None)
    if restored is not None:
      step, state = restored
      log.info("resumed %s at step %d", self.workdir, step)
      return step, state, selection.restore(self.workdir, step)
    with self.rt.sharding_context():
      state = self.compiled.init(jax.random.key(int(self.config.seed), impl="rbg"))
    source = self.source
    if source.params is not None:
      src = {"bert": source.params["bert"]}
      if "classifier" in source.params and source.labels == self.labels:
        src["classifier"] = source.params["classifier"]  # same labels: keep the trained head
      params, _ = init_from.merge_params(state.params, src, origin=source.origin)
      state = state.replace(params=params)
    return 0, state, selection

  def evaluate(self, state) -> dict:
    t = time.perf_counter()
    task = self.config.task
    outputs = inference.predict_probs(self.rt, state.params, self.enc_dev, self.eval_batch_size,
                                      self.buckets, task.truncated_tag)
    result = inference.score(self.kind, self.labels, outputs, self.dev_ex, task.positive_label)
    result["eval_time_s"] = time.perf_counter() - t
    return result

  # --- the loop's Task: the step, the window's scalars, the hooks --------------------------------

  def step(self, state, batch):
    return self.compiled.train_step(state, batch, self._seed)

  def train_scalars(self, sums: dict, step: int) -> dict:
    return {**steps.summarize(sums, self.kind), "epoch": step / self.per_epoch}

  def after_eval(self, state, metrics: dict, selection):
    plateau = self.config.reduce_on_plateau
    if not plateau.enabled:
      return state, {}
    # The plateau rule wants lower-is-better: the negated selection score.
    opt_state, scale = optim.step_plateau(state.opt_state, plateau, -selection.score(metrics))
    return state.replace(opt_state=opt_state), {"lr_scale": scale}

  def checkpoint_view(self, state):
    return _host(state)

  def context(self):
    return self.rt.sharding_context()

  def train(self) -> dict:
    """Trains to the end or until early stopping; returns the best evaluation and run facts."""
    config, workdir = self.config, self.workdir
    start = time.perf_counter()
    # The jitted step is shared by every run of this model and optimizer in the process (the
    # seeds of mebert.tasks.seeds), so its cache counts earlier runs' shapes too.
    cache_size = getattr(self.compiled.train_step, "_cache_size", None)  # shapes compiled
    compiled_before = int(cache_size()) if cache_size is not None else 0
    rule = Selection.from_config(config.early_stopping)  # the best checkpoint is the rule's
    ckpt = checkpoints.Checkpointer(
        workdir, keep=int(config.checkpoint.keep),
        best_metric=rule.metric if config.checkpoint.keep_best else None, best_mode=rule.mode,
        async_save=bool(config.checkpoint.async_save))
    try:
      step, state, selection = self.initial_state(ckpt)
      eval_every = int(config.eval.every_steps) or self.per_epoch
      cadence = loop.Cadence.from_config(
          config.train, num_steps=self.num_steps, eval_every=eval_every,
          save_every=int(config.checkpoint.every_steps) or eval_every, save_with_eval=True)
    except BaseException:
      ckpt.close()  # orbax's background cleanup must not outlive the interpreter (see trainer)
      raise
    self._seed = jax.device_put(np.int32(config.seed), self.compiled.replicated)
    batches = DevicePrefetcher(_PlannedBatches(self, step), self.rt.global_batch,
                               int(config.data.device_prefetch))
    out = loop.run(self, state, start_step=step, batches=batches, checkpointer=ckpt,
                   cadence=cadence, selection=selection, workdir=workdir,
                   config_dict=self.config_json)
    final = {**(selection.best_metrics or {}), "step": selection.best_step, "last_step": out.step,
             "stopped_early": selection.stopped, "num_train_examples": len(self.train_ex),
             "num_eval_examples": len(self.dev_ex), "steps_per_epoch": self.per_epoch,
             "labels": self.labels, "wall_time_s": time.perf_counter() - start}
    if cache_size is not None:
      final["train_step_compiles"] = int(cache_size()) - compiled_before
    if out.train_s:
      final.update(train_time_s=out.train_s, train_tokens_per_s=out.tokens / out.train_s,
                   train_real_tokens_per_s=out.real_tokens / out.train_s)
    write_json(workdir, "eval_results.json", final)
    return final


class _PlannedBatches:
  """Fine-tuning's training batches in order. Step k's batch is a pure function of (seed, k)
  through its epoch's plan, so the step alone is the stream's position: a resumed run replays
  exactly, and checkpoints hold nothing for the data."""

  def __init__(self, run: FineTuning, step: int):
    self.run, self.next_step, self._plan = run, step, (None, None)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    epoch, index = divmod(self.next_step, self.run.per_epoch)
    if self._plan[0] != epoch:  # the epoch's batches, planned once
      self._plan = (epoch, self.run._epoch_batches(epoch))
    self.next_step += 1
    return self.run._batch(*self._plan[1][index])

  def get_state(self) -> dict:
    return {"next_step": self.next_step}

  def set_state(self, state: dict) -> None:
    self.next_step = int(state["next_step"])


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
