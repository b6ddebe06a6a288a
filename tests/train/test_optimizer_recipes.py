"""The logged learning rate is the optimizer's (issue 20, item 3), and LAMB's exclusions (item 4):
LayerNorm and biases are outside both its weight decay and its trust ratio."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train_step import CFG, _batch, _train_config

from mebert.model.pretraining import BertForPreTraining
from mebert.tasks import steps as task_steps
from mebert.tasks.model import BertForTask
from mebert.train import optimizer, steps


def _with_nan(batch: dict, key: str) -> dict:
  return dict(batch, **{key: batch[key].at[0].set(jnp.nan)})


def _logged_rates(step, state, batches):
  """Runs `step` over `batches`; returns the learning rates it logged and the final state."""
  rates = []
  for batch in batches:
    state, metrics = step(state, batch)
    rates.append(float(metrics["learning_rate"]))
  return rates, state


def _check_rates(rates, state, schedule):
  """Steps 1-4 with step 2 non-finite: the optimizer applied updates at counts 0, 1, 2 (the
  skipped step used none and did not advance its count), so step 3 logs schedule(1), not
  schedule(2) as the step counter (which counts the skipped step) would."""
  (_, schedule_state), = optax.tree_utils.tree_get_all_with_path(state.opt_state,
                                                                  "ScaleByScheduleState")
  assert int(state.step) == 4 and int(schedule_state.count) == 3
  expected = [schedule(0), schedule(1), schedule(1), schedule(2)]
  np.testing.assert_allclose(rates, [float(x) for x in expected], rtol=1e-6)
  assert float(schedule(1)) != float(schedule(2))


def test_pretraining_logs_the_rate_at_the_optimizers_count_after_a_skipped_step():
  train_cfg = _train_config(warmup_steps=4)  # warming up: every step's rate differs
  tx, schedule = optimizer.make_optimizer(train_cfg), optimizer.learning_rate_schedule(train_cfg)
  good = jax.tree.map(jnp.asarray, _batch())
  state = jax.jit(lambda rng: nn.unbox(steps.init_train_state(rng, BertForPreTraining(CFG), tx,
                                                               good)))(jax.random.key(0))
  step = jax.jit(functools.partial(steps.train_step, model=BertForPreTraining(CFG), tx=tx,
                                   schedule=schedule, seed=0))
  bad = _with_nan(good, "masked_lm_weights")
  rates, state = _logged_rates(step, state, [good, bad, good, good])
  _check_rates(rates, state, schedule)


def test_finetuning_logs_the_rate_at_the_optimizers_count_after_a_skipped_step():
  train_cfg = _train_config(warmup_steps=4)
  tx, schedule = optimizer.make_optimizer(train_cfg), optimizer.learning_rate_schedule(train_cfg)
  model = BertForTask(CFG, "classification", 2)
  rows = _batch()
  good = {"input_ids": jnp.asarray(rows["input_ids"]),
          "token_type_ids": jnp.zeros((8, 16), jnp.int32),
          "segment_ids": jnp.asarray(rows["segment_ids"]), "weights": jnp.ones(8),
          "labels": jnp.asarray(rows["next_sentence_labels"])}

  @jax.jit
  def init(rng):
    params = nn.unbox(model.init(rng, good["input_ids"]))["params"]
    zero = lambda: jnp.zeros((), jnp.int32)
    return steps.TrainState(step=zero(), params=params, opt_state=tx.init(params),
                            nonfinite_in_row=zero(), nonfinite_total=zero())

  state = init(jax.random.key(0))
  step = jax.jit(functools.partial(task_steps.train_step, seed=0, model=model, tx=tx,
                                   schedule=schedule, kind="classification"))
  bad = _with_nan(good, "weights")
  rates, state = _logged_rates(step, state, [good, bad, good, good])
  _check_rates(rates, state, schedule)


# --- LAMB ------------------------------------------------------------------------------------

def _lamb_case():
  rng = np.random.default_rng(0)
  params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
                      "bias": jnp.asarray(rng.normal(size=(3,)) * 0.1, jnp.float32)},
            "LayerNorm": {"scale": jnp.asarray(1.0 + rng.normal(size=(3,)) * 0.1, jnp.float32),
                          "bias": jnp.asarray(rng.normal(size=(3,)) * 0.1, jnp.float32)}}
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  return params, grads


LR, WD = 0.01, 0.1


def _lamb_update(params, grads):
  """One update of the configured LAMB (a constant rate, no clipping, so only LAMB acts)."""
  train_cfg = _train_config(optimizer="lamb", learning_rate=LR, weight_decay=WD,
                            schedule="constant", warmup_steps=0, clip_grad_norm=0.0)
  tx = optimizer.make_optimizer(train_cfg)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


def test_lamb_biases_and_layernorm_get_adams_update_and_kernels_the_trust_ratio():
  params, grads = _lamb_case()
  updates = _lamb_update(params, grads)
  adam = optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-6)
  direction, _ = adam.update(grads, adam.init(params), params)
  for path in (("dense", "bias"), ("LayerNorm", "scale"), ("LayerNorm", "bias")):
    got, want = updates[path[0]][path[1]], -LR * direction[path[0]][path[1]]
    np.testing.assert_allclose(got, want, rtol=1e-6, err_msg="/".join(path))
  kernel = params["dense"]["kernel"]
  decayed = direction["dense"]["kernel"] + WD * kernel
  ratio = jnp.linalg.norm(kernel) / jnp.linalg.norm(decayed)
  assert abs(float(ratio) - 1.0) > 0.1  # the ratio really scales this update
  np.testing.assert_allclose(updates["dense"]["kernel"], -LR * ratio * decayed, rtol=1e-5)


def test_lamb_state_is_optax_lambs_so_checkpoints_restore():
  """The state tree's leaves (paths, shapes) are optax.lamb's: a checkpoint of a LAMB run
  written before the trust ratio was masked restores into the new optimizer."""
  params, _ = _lamb_case()
  schedule = optax.linear_schedule(0.0, LR, 10)
  ours = optimizer.lamb(schedule, weight_decay=WD).init(params)
  reference = optax.lamb(schedule, weight_decay=WD, eps=1e-6,
                         mask=optimizer.decay_mask).init(params)
  flat = lambda tree: [(jax.tree_util.keystr(k), v.shape)
                       for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]]
  assert flat(ours) == flat(reference)
  assert int(optimizer.schedule_count(ours)) == 0


@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_schedule_count_is_the_optimizers_own(kind):
  params, grads = _lamb_case()
  tx = optimizer.make_optimizer(_train_config(optimizer=kind))
  state = tx.init(params)
  for _ in range(3):
    _, state = tx.update(grads, state, params)
  assert int(optimizer.schedule_count(state)) == 3
