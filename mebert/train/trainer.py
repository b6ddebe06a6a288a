"""Pretraining: the sharded state, its resume or initialisation, batches, step and evaluation.

What is pretraining's own lives here (Experiment: tokenizer, model, mesh, shardings, the jitted
steps, the held-out evaluation); the loop itself (logging, evaluation cadence, checkpoints,
preemption, non-finite stop, profiler, host-sync guard) is mebert.train.loop, shared with
fine-tuning and distillation. The next `data.device_prefetch` batches are put on the devices while
a step runs (mebert.parallel.prefetch), and the checkpoint saves the data position with the state,
so a resumed run sees the same batches. The train and eval steps are each traced and compiled
once per run.
"""

from __future__ import annotations

import functools
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mebert.data.pipeline import make_pretraining_iterator
from mebert.data.tokenizer import ensure_tokenizer, trained_vocab_path
from mebert.model import positions
from mebert.model.config import ModelConfig
from mebert.parallel import mesh as mesh_lib
from mebert.parallel.prefetch import DevicePrefetcher
from mebert.train import checkpoints, distributed, init_from, loop, objectives, optimizer, steps
from mebert.train import selection as selection_lib
from mebert.train.records import write_json

log = logging.getLogger(__name__)


class Experiment:
  """Everything a mode (train, eval, compile) needs: tokenizer, model, mesh, shardings."""

  def __init__(self, config, workdir: str, tokenizer=None, devices=None):
    """`devices`: what the mesh is built over (default: all of this run's devices); compile-only
    devices of a TPU slice that is not attached work too (mebert.train.compile_report), since
    nothing here computes on them: shapes are abstract and example inputs are host numpy."""
    self.config = config
    self.workdir = workdir
    self.mesh = mesh_lib.make_mesh(config.mesh, devices)
    self.platform = self.mesh.devices.flat[0].platform  # decides model.dtype="auto"
    # init.hf: the folder decides the architecture and the tokenizer; config.model only runtime keys.
    self.hf_source = init_from.HfSource(config) if config.init.hf else None
    if self.hf_source is not None:
      self.tokenizer, model_config = self.hf_source.tokenizer, self.hf_source.model_config
    else:
      self.tokenizer = tokenizer if tokenizer is not None else ensure_tokenizer(config.data, workdir)
      model_config = ModelConfig.from_dict(config.model, vocab_size=self.tokenizer.vocab_size)
    self.model_config = model_config.for_platform(self.platform)
    if self.model_config.vocab_size < self.tokenizer.vocab_size:
      raise ValueError(f"model.vocab_size={self.model_config.vocab_size} is smaller than the "
                       f"tokenizer's {self.tokenizer.vocab_size} tokens")
    positions.check_length(self.model_config, int(config.data.seq_len))
    self.rules = mesh_lib.rules_from_config(config.mesh)
    # The processes the mesh spans: jax.process_count() on a real run, the target slice's hosts
    # when compiling for one.
    self.process_count = len({d.process_index for d in self.mesh.devices.flat})
    self.batch_size = _checked_batch_size("train.batch_size", int(config.train.batch_size),
                                          self.mesh, int(config.train.grad_accum_steps),
                                          self.process_count)
    self.eval_batch_size = _checked_batch_size(
        "eval.batch_size", int(config.eval.batch_size or config.train.batch_size), self.mesh, 1,
        self.process_count)
    self.tx = optimizer.make_optimizer(config.train)
    self.schedule = optimizer.learning_rate_schedule(config.train)
    # train.objective: BERT's MLM (+NSP) or ELECTRA's replaced-token detection (train/objectives.py).
    self.objective = objectives.from_config(config, self.model_config)
    self.train_model, self.eval_model = self.objective.train_model, self.objective.eval_model
    self.batch_sharding = mesh_lib.batch_sharding(self.mesh)
    self._eval_fn = None  # (model, param shardings, jitted eval step): see evaluate()
    with self.sharding_context():
      self._init_fn = functools.partial(self.objective.init_state, model=self.eval_model, tx=self.tx,
                                        example_batch=_example_batch(config.data))
      boxed = jax.eval_shape(self._init_fn, jax.eval_shape(jax.random.key, 0))
      self.state_shardings = mesh_lib.logical_shardings(boxed, self.mesh, self.rules)
      self.abstract_state = jax.tree.map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), mesh_lib.strip_boxes(boxed),
          self.state_shardings)

  def sharding_context(self):
    """Mesh plus logical rules: traced model code resolves its logical axis names through it."""
    return mesh_lib.sharding_context(self.mesh, self.rules)

  def init_state(self) -> steps.TrainState:
    with self.sharding_context():
      init = jax.jit(lambda rng: nn.unbox(self._init_fn(rng)), out_shardings=self.state_shardings)
      return init(jax.random.key(self.config.seed))

  def data_iterator(self, split: str):
    batch = self.batch_size if split == "train" else self.eval_batch_size
    return make_pretraining_iterator(
        self.config.data, self.tokenizer, split=split, batch_size=batch // jax.process_count(),
        seed=self.config.seed, process_index=jax.process_index(),
        process_count=jax.process_count())

  def jitted_train_step(self):
    step_fn = functools.partial(
        self.objective.train_step, model=self.train_model, tx=self.tx, schedule=self.schedule,
        seed=int(self.config.seed), grad_accum_steps=int(self.config.train.grad_accum_steps))
    return jax.jit(step_fn, in_shardings=(self.state_shardings, self.batch_sharding),
                   out_shardings=(self.state_shardings, None), donate_argnums=0)

  def evaluate(self, params) -> dict:
    """MLM loss/accuracy and NSP accuracy on the held-out documents, plus the accuracy of always
    predicting the most frequent masked token (the baseline a model must beat)."""
    num_batches = int(self.config.eval.num_batches)
    # One jit per run, not per evaluation (each new jit traces and compiles again); a new one only
    # if a caller swapped the model or the shardings (mebert.compress evaluates int8 weights).
    model, shardings = self.eval_model, self.state_shardings.params
    if self._eval_fn is None or self._eval_fn[0] is not model or self._eval_fn[1] is not shardings:
      self._eval_fn = (model, shardings, jax.jit(functools.partial(self.objective.eval_step,
                                                                   model=model),
                                                 in_shardings=(shardings, self.batch_sharding)))
    eval_fn = self._eval_fn[2]
    totals, target_counts = None, np.zeros(self.model_config.vocab_size, np.int64)
    iterator = self.data_iterator("eval")
    with self.sharding_context():
      for i, batch in enumerate(iterator):
        if num_batches and i >= num_batches:
          break
        ids = batch["masked_lm_ids"][batch["masked_lm_weights"] > 0]
        target_counts += np.bincount(ids, minlength=target_counts.size)[:target_counts.size]
        sums = eval_fn(params, mesh_lib.global_batch(_model_batch(batch), self.mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    _close(iterator)
    if totals is None:
      raise ValueError("the eval split produced no batch: fewer held-out examples than "
                       f"eval.batch_size={self.eval_batch_size}; lower it or raise data.eval_fraction")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      target_counts = np.sum(multihost_utils.process_allgather(target_counts), axis=0)
    metrics = steps.summarize(jax.device_get(totals))
    metrics["most_frequent_token_accuracy"] = float(target_counts.max() / max(target_counts.sum(), 1))
    metrics["most_frequent_token"] = self.tokenizer.id_to_token(int(target_counts.argmax()))
    metrics["eval_predictions"] = int(target_counts.sum())
    return metrics



def _checked_batch_size(key: str, size: int, mesh, accum: int, processes: int) -> int:
  dp = mesh_lib.data_parallel_size(mesh)
  if size <= 0 or size % dp:
    raise ValueError(f"{key}={size} is not divisible by the data-parallel size {dp} "
                     f"(mesh.data*mesh.fsdp)")
  if size % processes:
    raise ValueError(f"{key}={size} is not divisible by the {processes} processes")
  if (size // dp) % accum:
    raise ValueError(f"{key}={size} split over {dp} devices is not divisible by "
                     f"train.grad_accum_steps={accum}")
  return size


def _example_batch(data_config) -> dict:
  """Host numpy, not jnp: a jnp array would be computed on the mesh's devices, which need not be
  attached (compile-only devices of a TPU slice)."""
  length, preds = int(data_config.seq_len), int(data_config.max_predictions_per_seq)
  zeros = lambda *shape: np.zeros(shape, np.int32)
  return {"input_ids": zeros(1, length), "token_type_ids": zeros(1, length),
          "segment_ids": np.ones((1, length), np.int32), "positions": zeros(1, length),
          "masked_lm_positions": zeros(1, preds)}


_MODEL_BATCH_KEYS = steps.MODEL_INPUTS + ("masked_lm_positions", "masked_lm_ids",
                                          "masked_lm_weights", "next_sentence_labels")
_PACKED_BATCH_KEYS = ("cls_positions",)  # only in packed rows (data.pack)


def _model_batch(batch: dict) -> dict:
  """The arrays the step reads (bookkeeping such as example_ids stays on the host)."""
  return {k: batch[k] for k in _MODEL_BATCH_KEYS + _PACKED_BATCH_KEYS if k in batch}


def _close(iterator) -> None:
  close = getattr(iterator, "close", None)
  if close is not None:
    close()


class _Pretraining(loop.Task):
  """Pretraining's part of the loop: its step, metrics and evaluation."""

  name = "pretrain"
  progress_keys = ("loss", "mlm_accuracy")

  def __init__(self, exp: Experiment, record_ids):
    self.exp, self.train_step, self.record_ids = exp, exp.jitted_train_step(), record_ids

  def step(self, state, batch):
    return self.train_step(state, batch)

  def evaluate(self, state) -> dict:
    return self.exp.evaluate(state.params)

  def train_scalars(self, sums: dict, step: int) -> dict:
    return steps.summarize(sums)

  def observe_batch(self, step: int, host_batch) -> None:
    self.record_ids(step, host_batch)

  def context(self):
    return self.exp.sharding_context()


def selection_rule(config) -> selection_lib.Selection | None:
  """checkpoint.best_metric (in checkpoint.best_mode's direction) decides the best checkpoint;
  early_stopping.patience evaluations without improvement stop the run. None: no best kept."""
  metric = str(config.checkpoint.best_metric)
  if not metric:
    return None
  return selection_lib.Selection(
      metric, str(config.checkpoint.best_mode),
      int(config.early_stopping.patience), float(config.early_stopping.min_delta),
      key="checkpoint.best_metric")


def train_and_evaluate(config, workdir: str) -> dict:
  """Pretrains to config.train.num_steps, resuming from the workdir; returns the final eval."""
  exp = Experiment(config, workdir)
  train_iter = exp.data_iterator("train")  # a bad data file fails before orbax starts its threads
  selection = selection_rule(config)
  ckpt = checkpoints.Checkpointer(workdir, keep=int(config.checkpoint.keep),
                                  best_metric=selection.metric if selection else None,
                                  best_mode=selection.mode if selection else "auto",
                                  async_save=bool(config.checkpoint.async_save))
  try:
    if ckpt.all_steps():
      _check_same_architecture(config, workdir)
    restored = ckpt.restore_latest(exp.abstract_state, train_iter)
    if restored is not None:
      start_step, state = restored
      log.info("resumed from checkpoint step %d in %s", start_step, workdir)
    else:
      state = init_from.maybe_initialize(exp.init_state(), config, exp)
      start_step = int(jax.device_get(state.step))  # init.continue_from: the earlier run's step
    cadence = loop.Cadence.from_config(
        config.train, num_steps=int(config.train.num_steps),
        eval_every=int(config.eval.every_steps), save_every=int(config.checkpoint.every_steps))
  except BaseException:
    # Close before the error reaches the exit: orbax's background cleanup must not outlive the
    # interpreter, or its own traceback, not ours, becomes the last line printed.
    ckpt.close()
    raise
  config_dict = config.to_dict()
  if not config.data.vocab and exp.hf_source is None:  # the vocabulary trained on the first run
    config_dict["data"]["vocab"] = trained_vocab_path(workdir)
  # Only now that data, checkpoint and init all check out: a bad input leaves the workdir as it was.
  write_json(workdir, "config.json", config_dict)
  batches = DevicePrefetcher(
      train_iter, lambda host: mesh_lib.global_batch(_model_batch(host), exp.mesh),
      int(config.data.device_prefetch))
  if selection is not None:
    selection = selection.restore(workdir, start_step)
  task = _Pretraining(exp, distributed.ExampleIdRecorder(workdir))  # MEBERT_RECORD_EXAMPLE_IDS=1
  out = loop.run(task, state, start_step=start_step, batches=batches, checkpointer=ckpt,
                 cadence=cadence, selection=selection, workdir=workdir,
                 config_dict=config_dict, save_batches=True)
  # A run that was already finished evaluates its last checkpoint again.
  final = dict(out.last_eval) if out.last_eval is not None else exp.evaluate(out.state.params)
  final["step"] = out.step
  write_json(workdir, f"eval_step_{out.step}.json", final)
  return final


# The model keys that decide parameter shapes or layout: a resumed run must keep them.
ARCHITECTURE_KEYS = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "hidden_act",
                     "max_position_embeddings", "type_vocab_size", "position_encoding",
                     "use_segment_embeddings", "encoding_fusion", "pre_layer_norm", "use_bias",
                     "scan_layers", "param_dtype", "family", "embedding_size", "layer_norm_bias")


def _check_same_architecture(config, workdir: str) -> None:
  """Resuming with another architecture fails here, naming the keys, rather than deep inside
  Orbax's restore with a shape error. Compares with the config saved in the latest checkpoint."""
  saved = (checkpoints.saved_config(workdir) or {}).get("model")
  if not isinstance(saved, dict):
    return  # an imported or older workdir: the restore itself checks the shapes
  changed = [f"model.{k}={config.model[k]!r} (checkpoint: {saved[k]!r})"
             for k in ARCHITECTURE_KEYS if k in saved and k in config.model and saved[k] != config.model[k]]
  if changed:
    raise ValueError(f"{workdir} holds checkpoints of another architecture: {', '.join(changed)}; "
                     "resume with the run's own model config, or train in a new workdir "
                     "(init.checkpoint=... starts from these weights)")


def evaluate_checkpoint(config, workdir: str, step: int | None = None) -> dict:
  """--mode=eval: restores params (latest readable step by default) and evaluates them.

  At a data.seq_len other than the run's own (length extrapolation), the results go to
  eval_step_<N>_len<L>.json, next to the training-length eval_step_<N>.json; an encoding that cannot
  represent the length (a learned table) stops before restoring, with the reason.
  """
  exp = Experiment(config, workdir)
  params, saved_config, restored_step = checkpoints.restore_params_and_step(
      workdir, step, abstract_params=exp.abstract_state.params)
  metrics = exp.evaluate(params)
  metrics["step"] = int(restored_step)
  seq_len = int(config.data.seq_len)
  metrics["seq_len"] = seq_len
  trained_seq_len = (saved_config.get("data") or {}).get("seq_len", seq_len)
  suffix = "" if seq_len == int(trained_seq_len) else f"_len{seq_len}"
  write_json(workdir, f"eval_step_{restored_step}{suffix}.json", metrics)
  return metrics


