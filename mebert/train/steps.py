"""The train state, its sharded initialisation, and the pure pretraining train/eval steps.

`train_step` is one module-level function. The trainer binds its static parts (model, optimizer,
schedule) with functools.partial and jits it once, with explicit in/out shardings and the state
donated. Losses are sums divided by whole-batch counts, so gradient accumulation over micro-batches
gives exactly the full-batch gradient.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from mebert.train import optimizer

MODEL_INPUTS = ("input_ids", "token_type_ids", "segment_ids", "positions")


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates applied (skipped non-finite steps count too)
  params: Any
  opt_state: Any
  nonfinite_in_row: jax.Array  # consecutive skipped updates (NaN/Inf loss or gradient)
  nonfinite_total: jax.Array


def init_train_state(rng, model: nn.Module, tx: optax.GradientTransformation,
                     example_batch: dict) -> TrainState:
  """Initial state with LogicallyPartitioned boxes (for shardings); unbox before use."""
  params = model.init(rng, **{k: example_batch[k] for k in MODEL_INPUTS},
                      masked_lm_positions=example_batch["masked_lm_positions"])["params"]
  zero = lambda: jnp.zeros((), jnp.int32)  # distinct buffers: the state is donated as a whole
  return TrainState(step=zero(), params=params, opt_state=tx.init(params),
                    nonfinite_in_row=zero(), nonfinite_total=zero())


def pretraining_sums(params, batch, model: nn.Module, rng, mlm_total, nsp_total):
  """(loss, sums): loss is this micro-batch's share of the whole-batch mean loss."""
  # Packed rows carry cls_positions [B, S] and next_sentence_labels [B, S] (-1 = empty slot).
  out = model.apply({"params": params}, **{k: batch[k] for k in MODEL_INPUTS},
                    masked_lm_positions=batch["masked_lm_positions"],
                    cls_positions=batch.get("cls_positions"), rngs={"dropout": rng})
  mlm_logits = out["mlm_logits"]  # [B, P, V] float32
  weights = batch["masked_lm_weights"].astype(jnp.float32)
  log_probs = jax.nn.log_softmax(mlm_logits, axis=-1)
  target = batch["masked_lm_ids"]
  mlm_ce = -jnp.take_along_axis(log_probs, target[..., None], axis=-1)[..., 0]
  mlm_correct = (jnp.argmax(mlm_logits, -1) == target).astype(jnp.float32)

  labels = batch["next_sentence_labels"]
  nsp_weight = (labels >= 0).astype(jnp.float32)  # -1 = no NSP/SOP label in this row
  if "nsp_logits" in out:
    nsp_log_probs = jax.nn.log_softmax(out["nsp_logits"], axis=-1)
    nsp_ce = -jnp.take_along_axis(nsp_log_probs, jnp.maximum(labels, 0)[..., None], axis=-1)[..., 0]
    nsp_correct = (jnp.argmax(out["nsp_logits"], -1) == labels).astype(jnp.float32)
  else:  # a family without an NSP head (RoBERTa, ModernBERT): the trainer requires no labels
    nsp_weight = nsp_ce = nsp_correct = jnp.zeros(labels.shape, jnp.float32)

  sums = {
      "mlm_loss": jnp.sum(mlm_ce * weights), "mlm_correct": jnp.sum(mlm_correct * weights),
      "mlm_count": jnp.sum(weights),
      "nsp_loss": jnp.sum(nsp_ce * nsp_weight), "nsp_correct": jnp.sum(nsp_correct * nsp_weight),
      "nsp_count": jnp.sum(nsp_weight),
      "tokens": jnp.asarray(batch["input_ids"].size, jnp.float32),
      "real_tokens": jnp.sum((batch["segment_ids"] != 0).astype(jnp.float32)),
  }
  loss = sums["mlm_loss"] / jnp.maximum(mlm_total, 1.0) + sums["nsp_loss"] / jnp.maximum(nsp_total, 1.0)
  return loss, sums


def micro_batches(batch: dict, grad_accum_steps: int) -> dict:
  """[B, ...] -> [A, B / A, ...] where micro-batch k holds rows k, k + A, k + 2A, ...

  The batch is split over the ('data', 'fsdp') devices in contiguous blocks of rows, so taking
  every A-th row gives each micro-batch B / (devices x A) rows from every device's own block: the
  reshape [B] -> [B / A, A] keeps the sharded axis outermost, and no row moves between devices.
  (Contiguous micro-batches would live on 1/A of the devices and be gathered onto all of them at
  every micro-step.) The constraint pins the rows of each micro-batch to the batch axes, so XLA
  cannot pick a layout that gathers them. Every leaf must have the rows as its leading axis: a
  packed fine-tuning batch's per-row arrays (cls_positions, weights, ...) split with their rows."""

  def split(x):
    if x.shape[0] % grad_accum_steps:
      raise ValueError(f"a batch of {x.shape[0]} rows does not split into "
                       f"train.grad_accum_steps={grad_accum_steps} micro-batches")
    strided = x.reshape(x.shape[0] // grad_accum_steps, grad_accum_steps, *x.shape[1:])
    return _constrain_rows(jnp.swapaxes(strided, 0, 1), row_axis=1)

  return jax.tree.map(split, batch)


def _constrain_rows(x: jax.Array, row_axis: int) -> jax.Array:
  """x with its row axis on the logical 'batch' axis (the mesh's batch axes) and the rest whole,
  as the batch arrives (mebert.parallel.mesh.batch_sharding). A no-op outside logical axis rules."""
  names = [None] * x.ndim
  names[row_axis] = "batch"
  return nn.with_logical_constraint(x, tuple(names))


def accumulated_grads(grads_and_sums: Callable, batch: dict, rng: jax.Array,
                      grad_accum_steps: int):
  """`grads_and_sums(batch, rng)` over the whole batch, or summed over `grad_accum_steps`
  micro-batches (`micro_batches`: each device's own rows) in a scan, each micro-batch with its own
  dropout key. Losses are sums normalised by the global batch's totals, so the accumulated
  gradient is exactly the full batch's."""
  if grad_accum_steps == 1:
    return grads_and_sums(batch, rng)
  micro = micro_batches(batch, grad_accum_steps)

  def accumulate(carry, inputs):
    index, micro_batch = inputs
    micro_batch = jax.tree.map(lambda x: _constrain_rows(x, row_axis=0), micro_batch)
    step = grads_and_sums(micro_batch, jax.random.fold_in(rng, index))
    return jax.tree.map(jnp.add, carry, step), None

  shapes = jax.eval_shape(lambda: grads_and_sums(jax.tree.map(lambda x: x[0], micro), rng))
  zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
  total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum_steps), micro))
  return total


def guarded_update(state: TrainState, grads, tx: optax.GradientTransformation,
                   finite: jax.Array, grad_norm: jax.Array | None = None) -> TrainState:
  """The optimizer update when `finite`; otherwise parameters and optimizer moments stay as they
  were and the skipped step is counted (nonfinite_in_row, nonfinite_total).

  A cond rather than jnp.where(finite, new, old) over every leaf, so that XLA updates the donated
  buffers in place: with the where, XLA:CPU copied the parameters and both Adam moments every
  step. Callers should read anything `finite` needs (e.g. the parameter norm) before this.
  `grad_norm`, the global norm of `grads` where the caller has it, goes to the clipping
  (optimizer.clip_by_global_norm) as `global_grad_norm`, so it is not summed a second time.

  Not optax.apply_if_finite: on a 4-layer, 256-wide BERT step (XLA:CPU) it read 5% more bytes and
  held 16 MB more temporaries (it tests every gradient again and adds zero updates outside its
  cond), keeps its counters in opt_state, and applies non-finite updates after its limit."""
  extra = {}
  if grad_norm is not None and isinstance(tx, optax.GradientTransformationExtraArgs):
    extra["global_grad_norm"] = grad_norm

  def update(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params, **extra)
    return optax.apply_updates(params, updates), opt_state

  params, opt_state = jax.lax.cond(finite, update, lambda p, o, g: (p, o), state.params,
                                   state.opt_state, grads)
  return TrainState(
      step=state.step + 1, params=params, opt_state=opt_state,
      nonfinite_in_row=jnp.where(finite, 0, state.nonfinite_in_row + 1),
      nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32))


def applied_learning_rate(schedule: Callable, state: TrainState) -> jax.Array:
  """The learning rate of this step's update: the schedule at the optimizer's own step count
  (which a skipped non-finite step does not advance), not at state.step (which it does)."""
  return schedule(optimizer.schedule_count(state.opt_state, default=state.step))


def train_step(state: TrainState, batch: dict, *, model: nn.Module,
               tx: optax.GradientTransformation, schedule: Callable, seed: int,
               grad_accum_steps: int = 1) -> tuple[TrainState, dict]:
  """One optimizer update on a global batch; returns the new state and metric sums."""
  rng = jax.random.fold_in(jax.random.key(seed), state.step)
  mlm_total = jnp.sum(batch["masked_lm_weights"].astype(jnp.float32))
  nsp_total = jnp.sum((batch["next_sentence_labels"] >= 0).astype(jnp.float32))
  grad_fn = jax.grad(pretraining_sums, has_aux=True)
  grads, sums = accumulated_grads(
      lambda b, r: grad_fn(state.params, b, model, r, mlm_total, nsp_total), batch, rng,
      grad_accum_steps)

  grad_norm = optax.global_norm(grads)
  param_norm = optax.global_norm(state.params)
  loss = sums["mlm_loss"] / jnp.maximum(mlm_total, 1.0) + sums["nsp_loss"] / jnp.maximum(nsp_total, 1.0)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)

  new_state = guarded_update(state, grads, tx, finite, grad_norm)
  metrics = dict(sums, loss=loss, grad_norm=grad_norm, param_norm=param_norm,
                 learning_rate=applied_learning_rate(schedule, state),
                 nonfinite_in_row=new_state.nonfinite_in_row,
                 steps=jnp.ones((), jnp.float32))
  return new_state, metrics


def eval_step(params, batch: dict, *, model: nn.Module) -> dict:
  """Metric sums for one eval batch (deterministic model, no dropout)."""
  _, sums = pretraining_sums(params, batch, model, jax.random.key(0), jnp.ones(()), jnp.ones(()))
  return sums


def summarize(sums: dict) -> dict:
  """Turns accumulated sums into means: losses per prediction, accuracies, per-step averages."""
  steps = float(sums.get("steps", 1.0)) or 1.0
  out = {}
  if "mlm_count" in sums:
    out["mlm_loss"] = float(sums["mlm_loss"]) / max(float(sums["mlm_count"]), 1.0)
    out["mlm_accuracy"] = float(sums["mlm_correct"]) / max(float(sums["mlm_count"]), 1.0)
  if float(sums.get("nsp_count", 0.0)) > 0:
    out["nsp_loss"] = float(sums["nsp_loss"]) / float(sums["nsp_count"])
    out["nsp_accuracy"] = float(sums["nsp_correct"]) / float(sums["nsp_count"])
  for key in ("loss", "grad_norm", "param_norm", "learning_rate"):
    if key in sums:
      out[key] = float(sums[key]) / steps
  if "nonfinite_in_row" in sums:
    out["nonfinite_in_row"] = int(sums["nonfinite_in_row"])
  if "rtd_count" in sums:  # ELECTRA's discriminator (mebert.train.electra_steps)
    count = max(float(sums["rtd_count"]), 1.0)
    out["rtd_loss"] = float(sums["rtd_loss"]) / count
    out["rtd_accuracy"] = float(sums["rtd_correct"]) / count
    out["rtd_replaced_fraction"] = float(sums["rtd_replaced"]) / count
    out["rtd_replaced_recall"] = float(sums["rtd_replaced_found"]) / max(float(sums["rtd_replaced"]), 1.0)
  return out
