"""ELECTRA's pure train and eval steps (replaced-token detection), in mebert.train.steps' contract.

loss = mlm_weight * generator MLM loss (mean over masked predictions)
     + rtd_weight * discriminator loss (sigmoid cross-entropy, mean over real tokens),
each a sum over the micro-batch divided by the whole batch's count, so gradient accumulation gives
the full batch's gradient. The generator's samples carry no gradient (mebert.model.electra), so the
generator learns from its MLM loss alone and the discriminator from the replaced-token loss, as
in the paper; the shared embeddings get both. The state, accumulation and the guarded update are
mebert.train.steps'.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mebert.model.electra import ElectraConfig
from mebert.train import steps

BATCH_KEYS = steps.MODEL_INPUTS + ("masked_lm_positions", "masked_lm_ids", "masked_lm_weights")


def init_train_state(rng, model: nn.Module, tx: optax.GradientTransformation,
                     example_batch: dict) -> steps.TrainState:
  """steps.init_train_state for ElectraForPreTraining (which also draws from "sample")."""
  init_rng, sample_rng = jax.random.split(rng)
  params = model.init({"params": init_rng, "sample": sample_rng},
                      **{k: example_batch[k] for k in steps.MODEL_INPUTS},
                      masked_lm_positions=example_batch["masked_lm_positions"])["params"]
  zero = lambda: jnp.zeros((), jnp.int32)
  return steps.TrainState(step=zero(), params=params, opt_state=tx.init(params),
                          nonfinite_in_row=zero(), nonfinite_total=zero())


def electra_sums(params, batch, model: nn.Module, rng, mlm_total, token_total,
                 electra: ElectraConfig):
  """(loss, sums): loss is this micro-batch's share of the whole-batch weighted loss."""
  dropout_rng, sample_rng = jax.random.split(rng)
  out = model.apply({"params": params}, **{k: batch[k] for k in steps.MODEL_INPUTS},
                    masked_lm_positions=batch["masked_lm_positions"],
                    masked_lm_ids=batch["masked_lm_ids"],
                    masked_lm_weights=batch["masked_lm_weights"],
                    rngs={"dropout": dropout_rng, "sample": sample_rng})
  weights = batch["masked_lm_weights"].astype(jnp.float32)
  log_probs = jax.nn.log_softmax(out["mlm_logits"], axis=-1)
  target = batch["masked_lm_ids"]
  mlm_ce = -jnp.take_along_axis(log_probs, target[..., None], axis=-1)[..., 0]
  mlm_correct = (jnp.argmax(out["mlm_logits"], -1) == target).astype(jnp.float32)

  real = (batch["segment_ids"] != 0).astype(jnp.float32)
  labels, logits = out["rtd_labels"], out["rtd_logits"]
  rtd_ce = optax.sigmoid_binary_cross_entropy(logits, labels)
  rtd_correct = ((logits > 0).astype(jnp.float32) == labels).astype(jnp.float32)
  sums = {
      "mlm_loss": jnp.sum(mlm_ce * weights), "mlm_correct": jnp.sum(mlm_correct * weights),
      "mlm_count": jnp.sum(weights),
      "rtd_loss": jnp.sum(rtd_ce * real), "rtd_correct": jnp.sum(rtd_correct * real),
      "rtd_count": jnp.sum(real), "rtd_replaced": jnp.sum(labels * real),
      "rtd_replaced_found": jnp.sum(rtd_correct * labels * real),
      "tokens": jnp.asarray(batch["input_ids"].size, jnp.float32), "real_tokens": jnp.sum(real),
  }
  loss = _loss(sums, mlm_total, token_total, electra)
  return loss, sums


def _loss(sums, mlm_total, token_total, electra: ElectraConfig):
  return (electra.mlm_weight * sums["mlm_loss"] / jnp.maximum(mlm_total, 1.0)
          + electra.rtd_weight * sums["rtd_loss"] / jnp.maximum(token_total, 1.0))


def train_step(state: steps.TrainState, batch: dict, *, model: nn.Module,
               tx: optax.GradientTransformation, schedule: Callable, seed: int,
               electra: ElectraConfig, grad_accum_steps: int = 1):
  """One optimizer update on a global batch; returns the new state and metric sums."""
  rng = jax.random.fold_in(jax.random.key(seed), state.step)
  mlm_total = jnp.sum(batch["masked_lm_weights"].astype(jnp.float32))
  token_total = jnp.sum((batch["segment_ids"] != 0).astype(jnp.float32))
  grad_fn = jax.grad(electra_sums, has_aux=True)
  grads, sums = steps.accumulated_grads(
      lambda b, r: grad_fn(state.params, b, model, r, mlm_total, token_total, electra), batch,
      rng, grad_accum_steps)
  grad_norm = optax.global_norm(grads)
  param_norm = optax.global_norm(state.params)
  loss = _loss(sums, mlm_total, token_total, electra)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)
  new_state = steps.guarded_update(state, grads, tx, finite, grad_norm)
  metrics = dict(sums, loss=loss, grad_norm=grad_norm, param_norm=param_norm,
                 learning_rate=steps.applied_learning_rate(schedule, state),
                 nonfinite_in_row=new_state.nonfinite_in_row,
                 steps=jnp.ones((), jnp.float32))
  return new_state, metrics


def eval_step(params, batch: dict, *, model: nn.Module, electra: ElectraConfig) -> dict:
  """Metric sums for one eval batch (deterministic model; a fixed sampling key)."""
  _, sums = electra_sums(params, batch, model, jax.random.key(0), jnp.ones(()), jnp.ones(()),
                         electra)
  return sums
