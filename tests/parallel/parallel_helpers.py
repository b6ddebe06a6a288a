"""Shared pieces of the parallelism tests: the tiny model, meshes, shardings, a few train steps."""

from __future__ import annotations

import functools
import importlib.util
import math
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_dict

from mebert.model.config import ModelConfig
from mebert.model.pretraining import BertForPreTraining
from mebert.parallel import mesh as mesh_lib
from mebert.train import optimizer, steps
from mebert.train.defaults import pretrain_defaults

REPO = pathlib.Path(__file__).resolve().parents[2]

TINY = ModelConfig(vocab_size=128, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                   max_position_embeddings=32)
SEQ, PREDS, BATCH = 32, 5, 8


def load_config(name: str, arg=None):
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", REPO / "configs" / "pretrain" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def make_mesh(shape):
  return mesh_lib.make_mesh(config_dict.ConfigDict(dict(zip(mesh_lib.MESH_AXES, shape))),
                            devices=jax.devices()[:math.prod(shape)])


def batch(rows=BATCH, length=SEQ, preds=PREDS, vocab=128, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, vocab, size=(rows, length)).astype(np.int32)
  segment = np.ones((rows, length), np.int32)
  segment[::2, -5:] = 0  # some padding
  return {"input_ids": ids, "token_type_ids": (np.arange(length) >= length // 2).astype(np.int32)[None].repeat(rows, 0),
          "segment_ids": segment, "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
          "masked_lm_positions": np.tile(np.arange(1, preds + 1, dtype=np.int32), (rows, 1)),
          "masked_lm_ids": rng.integers(5, vocab, size=(rows, preds)).astype(np.int32),
          "masked_lm_weights": (rng.random((rows, preds)) > 0.2).astype(np.float32),
          "next_sentence_labels": rng.integers(0, 2, size=(rows,)).astype(np.int32)}


def train_config(**overrides):
  c = pretrain_defaults().train
  c.num_steps, c.warmup_steps, c.learning_rate = 10, 2, 1e-3
  c.update(overrides)
  return c


def init_fn(cfg: ModelConfig, tx):
  return functools.partial(steps.init_train_state, model=BertForPreTraining(cfg), tx=tx,
                           example_batch=jax.tree.map(jnp.asarray, batch(rows=1)))


def state_shardings(cfg: ModelConfig, mesh, rules=mesh_lib.DEFAULT_RULES):
  """(abstract boxed state, NamedShardings) of the train state on `mesh`."""
  tx = optimizer.make_optimizer(train_config())
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init_fn(cfg, tx), jax.random.key(0))
    return boxed, mesh_lib.logical_shardings(boxed, mesh, rules)


# The CPU backend's LLVM optimisations dominate compile time and change nothing about how the
# program is partitioned, which is what these tests compare.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@functools.lru_cache(maxsize=4)
def initial_state(cfg: ModelConfig = TINY):
  """The unsharded initial train state as numpy (initialised once, placed on each mesh)."""
  tx = optimizer.make_optimizer(train_config())
  init = init_fn(cfg, tx)
  key = jax.random.key(0)
  state = jax.jit(lambda r: nn.unbox(init(r))).lower(key).compile(compiler_options=FAST_COMPILE)(key)
  return jax.device_get(state)


def run_steps(mesh_shape, num_steps=5, cfg=TINY):
  """Losses of `num_steps` sharded train steps (fp32, dropout on) and the final state."""
  mesh = make_mesh(mesh_shape)
  rules = mesh_lib.DEFAULT_RULES
  tc = train_config()
  tx, schedule = optimizer.make_optimizer(tc), optimizer.learning_rate_schedule(tc)
  losses = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init_fn(cfg, tx), jax.random.key(0))
    shardings = mesh_lib.logical_shardings(boxed, mesh, rules)
    state = jax.device_put(initial_state(cfg), shardings)
    step = jax.jit(functools.partial(steps.train_step, model=BertForPreTraining(cfg, deterministic=False),
                                     tx=tx, schedule=schedule, seed=0),
                   in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
                   out_shardings=(shardings, None), donate_argnums=0)
    compiled = None
    for i in range(num_steps):
      global_batch = mesh_lib.global_batch(batch(seed=i), mesh)
      if compiled is None:
        compiled = step.lower(state, global_batch).compile(compiler_options=FAST_COMPILE)
      state, metrics = compiled(state, global_batch)
      losses.append(float(metrics["loss"]))
  return np.array(losses), state
