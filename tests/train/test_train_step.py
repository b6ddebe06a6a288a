"""The train step: data-parallel equals single-device, accumulation equals the full batch, one
compilation for the whole run, and non-finite steps are skipped and counted."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import config_dict

from mebert.model.config import ModelConfig
from mebert.model.pretraining import BertForPreTraining
from mebert.parallel import mesh as mesh_lib
from mebert.train import optimizer, steps
from mebert.train.defaults import pretrain_defaults

CFG = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                  max_position_embeddings=32)


def _batch(rows=8, length=16, preds=4, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, 64, size=(rows, length)).astype(np.int32)
  segment = np.ones((rows, length), np.int32)
  segment[::2, -3:] = 0  # some padding
  return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "segment_ids": segment,
          "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
          "masked_lm_positions": np.tile(np.arange(1, preds + 1, dtype=np.int32), (rows, 1)),
          "masked_lm_ids": rng.integers(5, 64, size=(rows, preds)).astype(np.int32),
          "masked_lm_weights": (rng.random((rows, preds)) > 0.2).astype(np.float32),
          "next_sentence_labels": rng.integers(0, 2, size=(rows,)).astype(np.int32)}


def _train_config(**overrides):
  c = pretrain_defaults().train
  c.num_steps, c.warmup_steps, c.learning_rate = 10, 2, 1e-3
  c.update(overrides)
  return c


def _run(mesh_axes, num_steps=3, accum=1, dropout=True):
  mesh = mesh_lib.make_mesh(config_dict.ConfigDict(dict(zip(mesh_lib.MESH_AXES, mesh_axes))),
                            devices=jax.devices()[:int(np.prod(mesh_axes))])
  rules = mesh_lib.DEFAULT_RULES
  train_cfg = _train_config()
  tx, schedule = optimizer.make_optimizer(train_cfg), optimizer.learning_rate_schedule(train_cfg)
  cfg = CFG if dropout else CFG.replace(dropout_rate=0.0, attention_dropout_rate=0.0)
  init = functools.partial(steps.init_train_state, model=BertForPreTraining(cfg), tx=tx,
                           example_batch=jax.tree.map(jnp.asarray, _batch(rows=1)))
  losses, traces = [], []

  def counted_step(*args, **kwargs):
    traces.append(1)
    return steps.train_step(*args, **kwargs)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init, jax.random.key(0))
    shardings = mesh_lib.logical_shardings(boxed, mesh, rules)
    state = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(jax.random.key(0))
    step = jax.jit(functools.partial(counted_step, model=BertForPreTraining(cfg, deterministic=False),
                                     tx=tx, schedule=schedule, seed=0, grad_accum_steps=accum),
                   in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
                   out_shardings=(shardings, None), donate_argnums=0)
    for i in range(num_steps):
      state, metrics = step(state, mesh_lib.global_batch(_batch(seed=i), mesh))
      losses.append(float(metrics["loss"]))
  return np.array(losses), state, len(traces)


def test_data_parallel_loss_equals_single_device():
  single, _, _ = _run((1, 1, 1))
  parallel, _, _ = _run((8, 1, 1))
  np.testing.assert_allclose(parallel, single, atol=1e-5)
  assert single[-1] < single[0] + 1.0  # it trains, not just runs


def test_gradient_accumulation_equals_full_batch():
  full, full_state, _ = _run((1, 1, 1), num_steps=2, dropout=False)
  accumulated, acc_state, _ = _run((1, 1, 1), num_steps=2, accum=4, dropout=False)
  np.testing.assert_allclose(accumulated, full, atol=1e-5)
  for a, b in zip(jax.tree.leaves(full_state.params), jax.tree.leaves(acc_state.params)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_train_step_compiles_once():
  _, _, traces = _run((2, 2, 2), num_steps=4)
  assert traces == 1


def test_nonfinite_step_is_skipped_and_counted():
  train_cfg = _train_config()
  tx, schedule = optimizer.make_optimizer(train_cfg), optimizer.learning_rate_schedule(train_cfg)
  good = jax.tree.map(jnp.asarray, _batch())
  state = nn.unbox(steps.init_train_state(jax.random.key(0), BertForPreTraining(CFG), tx, good))
  step = jax.jit(functools.partial(steps.train_step, model=BertForPreTraining(CFG), tx=tx,
                                   schedule=schedule, seed=0))
  bad = dict(good, masked_lm_weights=good["masked_lm_weights"].at[0, 0].set(jnp.nan))
  new_state, metrics = step(state, bad)
  assert not np.isfinite(float(metrics["loss"]))
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new_state.params)):
    np.testing.assert_array_equal(a, b)
  assert int(new_state.nonfinite_in_row) == 1 and int(new_state.nonfinite_total) == 1
  new_state, _ = step(new_state, good)
  assert int(new_state.nonfinite_in_row) == 0 and int(new_state.nonfinite_total) == 1


def test_weight_decay_skips_layernorm_and_biases():
  params = nn.unbox(BertForPreTraining(CFG).init(jax.random.key(0), jnp.ones((1, 8), jnp.int32)))
  mask = optimizer.decay_mask(params["params"])
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert not any(v for k, v in flat.items() if "LayerNorm" in k or k.endswith("['bias']"))
  assert flat["['bert']['encoder']['layer_0']['attention']['self']['query']['kernel']"]


@pytest.mark.parametrize("scale", [0.3, 1.0, 7.0])  # below, at and above the clipping norm
def test_clipping_equals_optax_clip_by_global_norm(scale):
  rng = np.random.default_rng(0)
  grads = {"a": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
           "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
  grads = jax.tree.map(lambda g: g * scale / optax.global_norm(grads), grads)
  ours, reference = optimizer.clip_by_global_norm(1.0), optax.clip_by_global_norm(1.0)
  assert jax.tree.structure(ours.init(grads)) == jax.tree.structure(reference.init(grads))
  clipped, _ = ours.update(grads, ours.init(grads))
  expected, _ = reference.update(grads, reference.init(grads))
  for a, b in zip(jax.tree.leaves(clipped), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)
  assert float(optax.global_norm(clipped)) == pytest.approx(min(scale, 1.0), rel=1e-6)


def test_clipping_takes_the_norm_the_step_already_has():
  """guarded_update hands the step's gradient norm through optax.chain to the clipping, which then
  scales by it instead of summing the squares again."""
  grads = {"a": jnp.array([6.0]), "b": jnp.array([0.0, 8.0])}  # norm 10
  tx = optax.chain(optimizer.clip_by_global_norm(1.0), optax.sgd(1.0))
  state = tx.init(grads)
  own, _ = tx.update(grads, state)
  given, _ = tx.update(grads, state, global_grad_norm=jnp.asarray(20.0))  # half the scale
  for a, b in zip(jax.tree.leaves(own), jax.tree.leaves(given)):
    np.testing.assert_allclose(b, a / 2, rtol=1e-6)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "polynomial"])
def test_schedule_warms_up_then_decays(schedule):
  fn = optimizer.learning_rate_schedule(_train_config(schedule=schedule, num_steps=100,
                                                      warmup_steps=10))
  assert float(fn(0)) == 0.0 and abs(float(fn(10)) - 1e-3) < 1e-9
  assert float(fn(50)) < float(fn(10)) and float(fn(100)) <= 1e-9 + 0.0


def test_mesh_that_does_not_divide_devices_is_named():
  with pytest.raises(ValueError, match="mesh"):
    mesh_lib.mesh_shape({"data": 3, "fsdp": 1, "tensor": 1}, 8)
  assert mesh_lib.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)


def test_a_warmup_longer_than_the_run_is_cut_to_it_and_a_ratio_is_of_the_run(caplog):
  """--config.train.num_steps=3 on a config with 60 warmup steps: warm up over the 3 steps (with a
  warning), not fail; a negative warmup_steps means warmup_ratio of the run; a negative without a
  usable ratio is the one error left."""
  import logging

  train = pretrain_defaults().train
  train.num_steps, train.warmup_steps, train.learning_rate = 3, 60, 1e-3
  with caplog.at_level(logging.WARNING):
    schedule = optimizer.learning_rate_schedule(train)
  assert "train.warmup_steps=60 is longer than the schedule (3 steps" in caplog.text
  np.testing.assert_allclose([float(schedule(s)) for s in range(4)], [0, 1e-3 / 3, 2e-3 / 3, 1e-3],
                             rtol=1e-6)
  train.num_steps, train.warmup_steps, train.warmup_ratio = 50, -1, 0.1
  assert optimizer.warmup_steps(train) == 5 and optimizer.warmup_steps(train, 200) == 20
  train.warmup_ratio = 1.5
  with pytest.raises(ValueError, match=r"train.warmup_steps=-1 .* train.warmup_ratio=1.5 is not "
                                       r"in \[0, 1\]"):
    optimizer.learning_rate_schedule(train)
