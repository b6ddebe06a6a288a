"""Every encoding and block variant trains under a 2x2x2 (data, fsdp, tensor) mesh."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import config_dict

from mebert.model.config import ModelConfig
from mebert.model.pretraining import BertForPreTraining
from mebert.parallel import mesh as mesh_lib
from mebert.train import optimizer, steps
from mebert.train.defaults import pretrain_defaults

BASE = dict(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64,
            max_position_embeddings=16)
VARIANTS = {
    "learned": {}, "sinusoidal": dict(position_encoding="sinusoidal"),
    "relative": dict(position_encoding="relative"), "rotary": dict(position_encoding="rotary"),
    "alibi": dict(position_encoding="alibi"), "none": dict(position_encoding="none"),
    "concat_fusion": dict(encoding_fusion="concat"),
    "no_segments": dict(use_segment_embeddings=False),
    "pre_ln_geglu_nobias": dict(pre_layer_norm=True, hidden_act="geglu", use_bias=False),
    # ModernBERT's block with every layer local (dropout through the band); ELECTRA's narrower
    # embeddings with RoBERTa's offset positions and single token type (no NSP head: MLM only).
    "modernbert_local": dict(family="modernbert", pre_layer_norm=True, hidden_act="geglu",
                             use_bias=False, layer_norm_bias=False, position_encoding="rotary",
                             use_segment_embeddings=False, local_attention_window=6,
                             global_attention_every=0, first_layer_attention_norm=False),
    "roberta_factorised": dict(family="roberta", embedding_size=16, position_offset=2,
                               type_vocab_size=1, max_position_embeddings=18),
}


def _packed_batch(rows=8, length=16, preds=3):
  rng = np.random.default_rng(0)
  segments = np.array([1] * 6 + [2] * 5 + [3] * 3 + [0] * 2, np.int32)  # three packed segments
  positions = np.concatenate([np.arange(6), np.arange(5), np.arange(3), [0, 0]]).astype(np.int32)
  return {"input_ids": rng.integers(5, 64, (rows, length)).astype(np.int32),
          "token_type_ids": np.zeros((rows, length), np.int32),
          "segment_ids": np.tile(segments, (rows, 1)), "positions": np.tile(positions, (rows, 1)),
          "masked_lm_positions": np.tile(np.array([1, 7, 12], np.int32), (rows, 1)),
          "masked_lm_ids": rng.integers(5, 64, (rows, preds)).astype(np.int32),
          "masked_lm_weights": np.ones((rows, preds), np.float32),
          "next_sentence_labels": rng.integers(0, 2, rows).astype(np.int32)}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_trains_on_a_2x2x2_mesh(name):
  cfg = ModelConfig(**{**BASE, **VARIANTS[name]})
  mesh = mesh_lib.make_mesh(config_dict.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2}))
  train_cfg = pretrain_defaults().train
  train_cfg.num_steps, train_cfg.warmup_steps, train_cfg.learning_rate = 10, 0, 3e-3
  tx, schedule = optimizer.make_optimizer(train_cfg), optimizer.learning_rate_schedule(train_cfg)
  batch = _packed_batch()
  init = functools.partial(steps.init_train_state, model=BertForPreTraining(cfg), tx=tx,
                           example_batch=jax.tree.map(lambda x: jnp.asarray(x[:1]), batch))
  rules = mesh_lib.DEFAULT_RULES
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    shardings = mesh_lib.logical_shardings(jax.eval_shape(init, jax.random.key(0)), mesh, rules)
    state = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(jax.random.key(0))
    step = jax.jit(functools.partial(steps.train_step, model=BertForPreTraining(cfg, False), tx=tx,
                                     schedule=schedule, seed=0),
                   in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
                   out_shardings=(shardings, None), donate_argnums=0)
    losses = []
    for _ in range(3):
      state, metrics = step(state, mesh_lib.global_batch(batch, mesh))
      losses.append(float(metrics["loss"]))
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]
