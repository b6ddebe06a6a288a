"""Gradient accumulation under data parallelism (issue 20, item 1): each micro-batch takes rows from
every device's own shard, so the compiled step gathers no batch data, each device computes
global / (devices x A) rows per micro-step, and the update equals the unaccumulated one.

Checked on the 8 fake CPU devices for pretraining's step, fine-tuning's (packed rows: per-row
arrays split with their rows) and the bert_large `:lamb` recipe compiled through the trainer."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import config_dict
from test_train_step import CFG, _batch, _train_config

from mebert.model.pretraining import BertForPreTraining
from mebert.parallel import mesh as mesh_lib
from mebert.tasks import steps as task_steps
from mebert.tasks.model import BertForTask
from mebert.train import optimizer, steps

NO_DROPOUT = CFG.replace(dropout_rate=0.0, attention_dropout_rate=0.0)
ROWS, ACCUM = 256, 4  # 8 rows per device per micro-step


def _mesh(data, fsdp):
  return mesh_lib.make_mesh(config_dict.ConfigDict({"data": data, "fsdp": fsdp, "tensor": 1}))


def _all_gathers(hlo: str) -> list[str]:
  """The result types of every all-gather in an optimized HLO module (sync or async form)."""
  return re.findall(r"= (\S+) all-gather(?:-start)?\(", hlo)


def _dims(hlo_type: str) -> tuple[int, ...]:
  return tuple(int(d) for d in re.search(r"\[([\d,]*)\]", hlo_type).group(1).split(",") if d)


def _rows_seen(monkeypatch, module, name):
  """Patches module.name (a loss function taking (params, batch, ...)) to record the per-device
  shape of the `input_ids` of every (micro-)batch it is traced with, as the compiler shards it."""
  original, seen = getattr(module, name), []

  def inspected(params, batch, *args, **kwargs):
    ids = batch["input_ids"]
    jax.debug.inspect_array_sharding(ids, callback=lambda s: seen.append(s.shard_shape(ids.shape)))
    return original(params, batch, *args, **kwargs)

  monkeypatch.setattr(module, name, inspected)
  return seen


def _pretraining_step(mesh, accum):
  """(jitted train step, initial state) of the tiny pretraining model without dropout."""
  rules = mesh_lib.DEFAULT_RULES
  train_cfg = _train_config(warmup_steps=0)  # the first update already moves the parameters
  tx, schedule = optimizer.make_optimizer(train_cfg), optimizer.learning_rate_schedule(train_cfg)
  init = functools.partial(steps.init_train_state, model=BertForPreTraining(NO_DROPOUT), tx=tx,
                           example_batch=jax.tree.map(jnp.asarray, _batch(rows=1)))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    shardings, _ = mesh_lib.sharded_abstract(jax.eval_shape(init, jax.random.key(0)), mesh, rules)
    state = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(jax.random.key(0))
  step = jax.jit(functools.partial(steps.train_step, model=BertForPreTraining(NO_DROPOUT, False),
                                   tx=tx, schedule=schedule, seed=0, grad_accum_steps=accum),
                 in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
                 out_shardings=(shardings, None))
  return step, state


def _compare_pretraining(mesh, monkeypatch):
  """One update with and without accumulation, each compiled once; returns the accumulated
  step's optimized HLO, the rows per device of each micro-batch, and its new state."""
  results = []
  for accum in (1, ACCUM):
    seen = _rows_seen(monkeypatch, steps, "pretraining_sums") if accum > 1 else []
    step, state = _pretraining_step(mesh, accum)
    with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.DEFAULT_RULES):
      batch = mesh_lib.global_batch(_batch(rows=ROWS), mesh)
      compiled = step.lower(state, batch).compile()
      state, metrics = compiled(state, batch)
    results.append((compiled.as_text(), seen, state, float(metrics["grad_norm"])))
    monkeypatch.undo()
  (_, _, full, full_norm), (hlo, seen, accumulated, norm) = results
  assert norm == pytest.approx(full_norm, rel=1e-5)
  _assert_same_update(accumulated, full)
  return hlo, seen, accumulated


def _assert_same_update(state, reference):
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(reference.params)):
    np.testing.assert_allclose(a, b, atol=1e-5)  # 1% of the learning rate
  for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(reference.opt_state)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-8)  # Adam's moments: the same gradients


def test_pure_data_parallel_accumulation_gathers_nothing_and_keeps_rows_local(monkeypatch):
  """8-way data parallelism, 256 rows, 4 micro-batches: 8 rows per device per micro-step (a
  contiguous micro-batch lives on 2 of the 8 devices and was gathered onto the others), no
  all-gather at all (the parameters are replicated), and the same update as the whole batch."""
  hlo, seen, _ = _compare_pretraining(_mesh(8, 1), monkeypatch)
  assert seen and all(shape == (ROWS // (8 * ACCUM), 16) for shape in seen), seen
  assert _all_gathers(hlo) == []


@pytest.mark.slow
def test_fsdp_accumulation_gathers_only_parameters(monkeypatch):
  """data=4 x fsdp=2: FSDP gathers parameters (each all-gather's shape is a parameter's), never
  rows of the batch or of its activations. (At 2 rows per device XLA gathers the pooler's few
  activation rows instead of reducing its weight gradient, with or without accumulation: hence
  8 rows per device per micro-step here.)"""
  hlo, seen, state = _compare_pretraining(_mesh(4, 2), monkeypatch)
  assert seen and all(shape == (ROWS // (8 * ACCUM), 16) for shape in seen), seen
  param_shapes = {tuple(sorted(x.shape)) for x in jax.tree.leaves(state.params)}
  gathers = _all_gathers(hlo)
  assert gathers, "FSDP should gather its sharded parameters"
  assert [g for g in gathers if tuple(sorted(_dims(g))) not in param_shapes] == []


def test_micro_batches_take_every_accum_th_row():
  batch = {"x": jnp.arange(16).reshape(8, 2), "labels": jnp.arange(8)}
  micro = steps.micro_batches(batch, 4)
  np.testing.assert_array_equal(micro["labels"], [[0, 4], [1, 5], [2, 6], [3, 7]])
  np.testing.assert_array_equal(micro["x"][1], [[2, 3], [10, 11]])  # rows 1 and 5, whole


def _packed_task_batch(rows, length=16, segments=3, seed=0):
  """A packed fine-tuning batch: per-row cls_positions, weights and labels [rows, segments]."""
  rng = np.random.default_rng(seed)
  starts = np.array([0, 5, 10], np.int32)[:segments]
  segment_ids = np.zeros((rows, length), np.int32)
  positions = np.zeros((rows, length), np.int32)
  for s, start in enumerate(starts):
    segment_ids[:, start:start + 5] = s + 1
    positions[:, start:start + 5] = np.arange(5)
  weights = (rng.random((rows, segments)) > 0.3).astype(np.float32)
  return {"input_ids": rng.integers(5, 64, size=(rows, length)).astype(np.int32),
          "token_type_ids": np.zeros((rows, length), np.int32), "segment_ids": segment_ids,
          "positions": positions, "cls_positions": np.tile(starts, (rows, 1)),
          "weights": weights, "labels": rng.integers(0, 3, size=(rows, segments)).astype(np.int32)}


@pytest.mark.slow
def test_finetuning_packed_accumulation_equals_whole_batch_without_gathers(monkeypatch):
  """Fine-tuning's step on packed rows (cls_positions, weights, labels per row) under 8-way data
  parallelism: the same update with 4 micro-batches, 8 rows per device each, no all-gather."""
  from mebert.tasks.defaults import finetune_defaults

  config = finetune_defaults()
  config.train.num_steps, config.train.warmup_steps, config.train.learning_rate = 10, 0, 1e-3
  mesh, rules = _mesh(8, 1), mesh_lib.DEFAULT_RULES
  model_cfg = NO_DROPOUT
  train_model = BertForTask(model_cfg, "classification", 3, 0.0, deterministic=False)
  eval_model = BertForTask(model_cfg, "classification", 3, 0.0, deterministic=True)
  results = []
  for accum in (1, ACCUM):
    seen = _rows_seen(monkeypatch, task_steps, "task_sums") if accum > 1 else []
    compiled = task_steps.compiled_steps.__wrapped__(
        train_model, eval_model, "classification", task_steps.optimizer_key(config),
        model_cfg.num_layers, accum, mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      state = compiled.init(jax.random.key(0, impl="rbg"))
      seed = jax.device_put(np.int32(0), compiled.replicated)
      batch = mesh_lib.global_batch(_packed_task_batch(ROWS), mesh)
      step = compiled.train_step.lower(state, batch, seed).compile()
      state, metrics = step(state, batch, seed)
    results.append((step.as_text(), seen, state, float(metrics["grad_norm"])))
    monkeypatch.undo()
  (_, _, full, full_norm), (hlo, seen, accumulated, norm) = results
  assert norm == pytest.approx(full_norm, rel=1e-5)
  _assert_same_update(accumulated, full)
  assert seen and all(shape == (ROWS // (8 * ACCUM), 16) for shape in seen), seen
  assert _all_gathers(hlo) == []


@pytest.mark.slow
def test_bert_large_lamb_recipe_compiles_accumulation_without_gathers(tmp_path, monkeypatch):
  """configs/pretrain/bert_large.py:lamb (shrunk to a tiny model and batch) with accumulation,
  compiled through the trainer's own jitted step as --mode=compile does."""
  import importlib.util

  from mebert.train import compile_report
  from tiny_run import REPO

  spec = importlib.util.spec_from_file_location("bert_large",
                                                REPO / "configs/pretrain/bert_large.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("lamb")
  c.model.update(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                 max_position_embeddings=32, vocab_size=128)
  c.data.seq_len, c.data.max_predictions_per_seq = 16, 4
  c.train.batch_size, c.train.grad_accum_steps = 256, ACCUM
  c.mesh.data = 8
  exp = compile_report.experiment(c, str(tmp_path))
  seen = _rows_seen(monkeypatch, steps, "pretraining_sums")
  with exp.sharding_context():
    hlo = exp.jitted_train_step().lower(exp.abstract_state,
                                        compile_report._abstract_batch(exp)).compile().as_text()
  assert seen and all(shape == (256 // (8 * ACCUM), 16) for shape in seen), seen
  assert _all_gathers(hlo) == []
