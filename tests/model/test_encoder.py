"""The encoder's contracts: padding is invisible, the gathered MLM head equals the dense one,
scanned and unrolled stacks agree, and mixed precision keeps float32 parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mebert.model.config import ModelConfig
from mebert.model.encoder import BertModel
from mebert.model.pretraining import BertForPreTraining

TINY = dict(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
            max_position_embeddings=64)


def _inputs(batch=2, length=12, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, 97, size=(batch, length)).astype(np.int32)
  types = np.zeros_like(ids)
  types[:, length // 2:] = 1
  return jnp.asarray(ids), jnp.asarray(types)


def test_padding_token_changes_no_other_output():
  cfg = ModelConfig(**TINY)
  model = BertModel(cfg)
  ids, types = _inputs(batch=1, length=10)
  params = model.init(jax.random.key(0), ids, types)
  segments = jnp.ones_like(ids).at[:, 7:].set(0)
  out = model.apply(params, ids, types, segments).sequence_output
  other = ids.at[:, 7:].set(jnp.array([3, 50, 90]))  # different tokens in the padded slots
  out2 = model.apply(params, other, types, segments).sequence_output
  np.testing.assert_allclose(out[:, :7], out2[:, :7], atol=1e-6)
  shorter = model.apply(params, ids[:, :7], types[:, :7], segments[:, :7]).sequence_output
  np.testing.assert_allclose(out[:, :7], shorter, atol=1e-5)


def test_gathered_mlm_head_equals_dense_head_at_masked_positions():
  cfg = ModelConfig(**TINY)
  model = BertForPreTraining(cfg)
  ids, types = _inputs()
  positions = jnp.array([[1, 4, 9], [0, 2, 11]], jnp.int32)
  params = model.init(jax.random.key(1), ids, types, masked_lm_positions=positions)
  gathered = model.apply(params, ids, types, masked_lm_positions=positions)["mlm_logits"]
  dense = model.apply(params, ids, types)["mlm_logits"]
  np.testing.assert_allclose(gathered, jnp.take_along_axis(dense, positions[..., None], axis=1),
                             atol=1e-5)
  assert gathered.shape == (2, 3, cfg.vocab_size)


def test_decoder_is_tied_to_word_embeddings():
  cfg = ModelConfig(**TINY)
  model = BertForPreTraining(cfg)
  ids, types = _inputs()
  params = nn.unbox(model.init(jax.random.key(2), ids, types))["params"]
  assert "decoder" not in str(jax.tree_util.tree_structure(params["cls"]))
  bumped = jax.tree.map(lambda x: x, params)
  bumped["bert"]["embeddings"]["word_embeddings"]["embedding"] *= 2.0
  a = model.apply({"params": params}, ids, types)["mlm_logits"]
  b = model.apply({"params": bumped}, ids, types)["mlm_logits"]
  assert not np.allclose(a, b)


@pytest.mark.parametrize("remat_policy", ["none", "full"])
def test_scanned_layers_equal_unrolled(remat_policy):
  unrolled_cfg = ModelConfig(**TINY, remat_policy=remat_policy)
  scanned_cfg = unrolled_cfg.replace(scan_layers=True)
  ids, types = _inputs()
  unrolled = BertModel(unrolled_cfg)
  params = nn.unbox(unrolled.init(jax.random.key(3), ids, types))["params"]
  layers = [params["encoder"].pop(f"layer_{i}") for i in range(unrolled_cfg.num_layers)]
  scanned_params = jax.tree.map(lambda x: x, params)
  scanned_params["encoder"]["layer"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  params["encoder"].update({f"layer_{i}": layer for i, layer in enumerate(layers)})
  a = unrolled.apply({"params": params}, ids, types).sequence_output
  b = BertModel(scanned_cfg).apply({"params": scanned_params}, ids, types).sequence_output
  np.testing.assert_allclose(a, b, atol=1e-5)
  grads = jax.grad(lambda p: BertModel(scanned_cfg).apply({"params": p}, ids, types)
                   .sequence_output.sum())(scanned_params)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_bfloat16_compute_keeps_float32_parameters():
  cfg = ModelConfig(**TINY, dtype="bfloat16")
  model = BertForPreTraining(cfg)
  ids, types = _inputs()
  variables = nn.unbox(model.init(jax.random.key(4), ids, types))
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  out = model.apply(variables, ids, types)
  assert out["mlm_logits"].dtype == jnp.float32  # logits and losses stay in float32
  f32 = BertForPreTraining(cfg.replace(dtype="float32")).apply(variables, ids, types)
  np.testing.assert_allclose(out["mlm_logits"], f32["mlm_logits"], atol=0.1)


def test_every_parameter_has_logical_axis_names():
  cfg = ModelConfig(**TINY)
  ids, types = _inputs()
  boxed = BertForPreTraining(cfg).init(jax.random.key(5), ids, types)["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  assert all(len(x.names) == x.value.ndim and None not in x.names for x in leaves)


@pytest.mark.parametrize("bad, message", [
    (dict(hidden_size=30, num_heads=4), "not divisible by num_heads"),
    (dict(position_encoding="spiral"), "position_encoding"),
    (dict(dtype="float8"), "dtype"),
])
def test_bad_model_config_names_the_key(bad, message):
  with pytest.raises(ValueError, match=message):
    ModelConfig(**{**TINY, **bad})


def test_unknown_model_key_is_named():
  with pytest.raises(ValueError, match="num_layerz"):
    ModelConfig.from_dict({"num_layerz": 2})
