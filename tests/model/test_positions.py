"""Each position encoding's defining property, and the model-level guarantees every encoding keeps:
packed rows equal their segments run alone, padding is invisible, and lengths extrapolate."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mebert.model import positions as positions_lib
from mebert.model.attention import apply_rotary
from mebert.model.config import ModelConfig
from mebert.model.encoder import BertModel
from mebert.parallel import mesh as mesh_lib

ENCODINGS = ("learned", "sinusoidal", "relative", "rotary", "alibi", "none")
ATOL = 1e-5
# One packed row: three segments (positions restart), then two padding tokens.
PACKED = dict(
    input_ids=np.array([[5, 9, 3, 17, 22, 8, 41, 11, 0, 0]]),
    token_type_ids=np.array([[0, 1, 1, 0, 1, 0, 0, 1, 0, 0]]),
    segment_ids=np.array([[1, 1, 1, 2, 2, 3, 3, 3, 0, 0]]),
    positions=np.array([[0, 1, 2, 0, 1, 0, 1, 2, 0, 0]]))


def tiny(encoding: str, **overrides) -> ModelConfig:
  values = dict(vocab_size=50, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64,
                max_position_embeddings=16, dropout_rate=0.0, attention_dropout_rate=0.0,
                initializer_range=0.2, position_encoding=encoding, attention_backend="xla")
  values.update(overrides)
  return ModelConfig(**values)


def init_params(cfg: ModelConfig, seed: int = 0):
  """Random parameters in the model's own tree, drawn with numpy: no initialiser is compiled.

  Larger than at initialisation (std 0.2; relative bias std 1; LayerNorm scales 1 +- 0.1, non-zero
  biases), so that a wrong position, bucket or mask shows in the outputs well above ATOL.
  """
  shapes = jax.eval_shape(BertModel(cfg).init, jax.random.PRNGKey(0),
                          jnp.ones((1, 8), jnp.int32))["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "scale":
      return jnp.asarray(1.0 + 0.1 * rng.standard_normal(leaf.shape), leaf.dtype)
    std = 1.0 if name == "relative_attention_bias" else 0.2
    return jnp.asarray(std * rng.standard_normal(leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, nn.unbox(shapes))


def encode(cfg, params, input_ids, jit=False, **kwargs) -> np.ndarray:
  """Sequence outputs. Eager by default: on CPU the per-op cache is shared by every encoding and
  length, which keeps this file fast; a jitted program would compile once per (config, shape)."""
  kwargs = {k: None if v is None else jnp.asarray(v, jnp.int32) for k, v in kwargs.items()}
  apply = jax.jit(BertModel(cfg).apply) if jit else BertModel(cfg).apply
  out = apply({"params": params}, jnp.asarray(input_ids, jnp.int32), **kwargs)
  return np.asarray(out.sequence_output)


# ---- each encoding's defining property ---------------------------------------------------------


def test_rotary_scores_depend_only_on_offset():
  cfg = tiny("rotary")
  module = positions_lib.REGISTRY["rotary"](cfg)
  positions = jnp.broadcast_to(jnp.arange(12), (2, 12))
  segments = jnp.ones((2, 12), jnp.int32)
  assert jax.eval_shape(module.init, jax.random.PRNGKey(0), positions, segments) == {}
  rng = np.random.default_rng(0)
  q, k = (jnp.asarray(rng.standard_normal((2, 12, cfg.num_heads, cfg.head_dim)), jnp.float32)
          for _ in range(2))

  @jax.jit
  def scores(pos):
    sin, cos = module.apply({}, pos, segments).rotary
    assert sin.shape == cos.shape == (2, 12, cfg.head_dim // 2)
    qr, kr = apply_rotary(q, sin, cos), apply_rotary(k, sin, cos)
    return jnp.einsum("bqnd,bknd->bnqk", qr, kr), jnp.einsum("bqnd,bknd->bnqk", q, k)

  base, plain = map(np.asarray, scores(positions))
  np.testing.assert_allclose(np.asarray(scores(positions + 7)[0]), base, atol=ATOL)
  np.testing.assert_allclose(np.asarray(scores(positions + 3)[0]), base, atol=ATOL)
  # ... and rotation is not the identity: the scores do see the offsets, except at offset 0.
  assert np.abs(base - plain).max() > 0.1
  np.testing.assert_allclose(np.diagonal(base, axis1=2, axis2=3),
                             np.diagonal(plain, axis1=2, axis2=3), atol=ATOL)


def press_slopes(n):
  """Press et al.'s reference (github.com/ofirpress/attention_with_linear_biases)."""

  def get_slopes_power_of_2(n):
    start = 2 ** (-2 ** -(math.log2(n) - 3))
    ratio = start
    return [start * ratio ** i for i in range(n)]

  if math.log2(n).is_integer():
    return get_slopes_power_of_2(n)
  closest_power_of_2 = 2 ** math.floor(math.log2(n))
  return (get_slopes_power_of_2(closest_power_of_2)
          + press_slopes(2 * closest_power_of_2)[0::2][:n - closest_power_of_2])


def test_alibi_slopes_and_symmetric_bias():
  assert positions_lib.alibi_slopes(8) == pytest.approx([2.0 ** -(h + 1) for h in range(8)])
  for n in (1, 2, 3, 4, 6, 12, 16, 20):
    assert positions_lib.alibi_slopes(n) == pytest.approx(press_slopes(n)), n
  assert positions_lib.alibi_slopes(12)[8:] == pytest.approx([2 ** -0.5, 2 ** -1.5, 2 ** -2.5,
                                                              2 ** -3.5])

  cfg = tiny("alibi", hidden_size=64, num_heads=8)
  module = positions_lib.REGISTRY["alibi"](cfg)
  positions = jnp.arange(10)[None]
  assert jax.eval_shape(module.init, jax.random.PRNGKey(0), positions, positions) == {}
  bias = np.asarray(jax.jit(module.apply)({}, positions, jnp.ones_like(positions)).attention_bias)
  assert bias.shape == (1, 8, 10, 10) and bias.dtype == np.float32
  np.testing.assert_array_equal(bias, np.swapaxes(bias, 2, 3))
  np.testing.assert_array_equal(np.diagonal(bias, axis1=2, axis2=3), 0.0)
  distance = np.abs(np.arange(10)[:, None] - np.arange(10)[None, :])
  for h in range(8):
    np.testing.assert_allclose(bias[0, h], -(2.0 ** -(h + 1)) * distance, rtol=1e-6)


def test_sinusoidal_has_no_parameters_and_matches_formula():
  cfg = tiny("sinusoidal")
  module = positions_lib.REGISTRY["sinusoidal"](cfg)
  positions = jnp.arange(40)[None]
  assert jax.eval_shape(module.init, jax.random.PRNGKey(0), positions, positions) == {}
  params = jax.eval_shape(BertModel(cfg).init, jax.random.PRNGKey(0), positions)["params"]
  assert "position_embeddings" not in params["embeddings"]
  got = np.asarray(jax.jit(module.apply)({}, positions, jnp.ones_like(positions)).embedding[0])
  d = cfg.hidden_size
  p, i = np.arange(40)[:, None], np.arange(d // 2)[None, :]
  want = np.zeros((40, d))
  want[:, 0::2] = np.sin(p / 10000 ** (2 * i / d))
  want[:, 1::2] = np.cos(p / 10000 ** (2 * i / d))
  np.testing.assert_allclose(got, want, atol=ATOL)


def t5_relative_position_bucket(relative_position, bidirectional=True, num_buckets=32,
                                max_distance=128):
  """numpy transcription of mesh_tensorflow.transformer.transformer_layers's
  _relative_position_bucket (also T5's and Hugging Face's); relative_position = memory - context."""
  ret = 0
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(np.int32) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  # now n is in the range [0, inf)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  with np.errstate(divide="ignore", invalid="ignore"):
    val_if_large = max_exact + (
        np.log(n.astype(np.float32) / max_exact) / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)).astype(np.int32)
  val_if_large = np.minimum(val_if_large, num_buckets - 1)
  ret += np.where(is_small, n, val_if_large)
  return ret


def test_relative_buckets_match_t5_reference():
  offsets = np.arange(-300, 301)
  want = t5_relative_position_bucket(offsets)
  got = np.asarray(jax.jit(positions_lib.relative_position_bucket)(jnp.asarray(offsets)))
  np.testing.assert_array_equal(got, want)
  assert positions_lib.RELATIVE_NUM_BUCKETS == 32 and positions_lib.RELATIVE_MAX_DISTANCE == 128
  # Spot checks of the layout: exact below 8, keys after the query in the upper half, clamped.
  assert [int(got[300 + o]) for o in (0, -1, -7, 1, 7, -300, 300)] == [0, 1, 7, 17, 23, 15, 31]
  assert set(got.tolist()) == set(range(32)) - {16}  # offset 0 is always bucket 0


def test_relative_bias_is_the_table_at_each_bucket():
  cfg = tiny("relative")
  module = positions_lib.REGISTRY["relative"](cfg)
  positions = jnp.asarray([[0, 1, 2, 0, 1, 0, 1, 2, 0, 0]])
  segments = jnp.asarray([[1, 1, 1, 2, 2, 3, 3, 3, 0, 0]])
  table_box = jax.eval_shape(module.init, jax.random.PRNGKey(0), positions, segments)[
      "params"]["relative_attention_bias"]
  assert table_box.names == ("relpos_buckets", "heads")
  assert table_box.value.shape == (32, cfg.num_heads)
  table = np.random.default_rng(0).standard_normal((32, cfg.num_heads)).astype(np.float32)
  bias = np.asarray(module.apply({"params": {"relative_attention_bias": table}}, positions,
                                 segments).attention_bias)
  assert bias.shape == (1, cfg.num_heads, 10, 10) and bias.dtype == np.float32
  p = np.asarray(positions[0])
  buckets = t5_relative_position_bucket(p[None, :] - p[:, None])
  np.testing.assert_array_equal(bias[0], np.transpose(table[buckets], (2, 0, 1)))
  # One table for the whole model, under the embeddings, not one per layer.
  params = jax.eval_shape(BertModel(cfg).init, jax.random.PRNGKey(0), positions)["params"]
  paths = ["/".join(str(getattr(k, "key", k)) for k in path)
           for path, _ in jax.tree_util.tree_leaves_with_path(nn.unbox(params))]
  assert [p for p in paths if "relative" in p] == [
      "embeddings/position_embeddings/relative_attention_bias"]


def test_none_is_permutation_equivariant():
  cfg = tiny("none", use_segment_embeddings=True)
  params = init_params(cfg)
  ids = np.array([[5, 9, 3, 17, 22, 8, 41, 11, 30, 2]])
  perm = np.random.default_rng(0).permutation(10)
  types = np.zeros_like(ids)
  out = encode(cfg, params, ids, token_type_ids=types)
  out_perm = encode(cfg, params, ids[:, perm], token_type_ids=types)
  np.testing.assert_allclose(out_perm, out[:, perm], atol=ATOL)


@pytest.mark.parametrize("encoding", [e for e in ENCODINGS if e != "none"])
def test_other_encodings_see_order(encoding):
  """The guard on the tests below: with a position encoding, order does change the outputs."""
  cfg = tiny(encoding)
  params = init_params(cfg)
  ids = np.array([[5, 9, 3, 17, 22, 8, 41, 11, 30, 2]])
  # Not a reversal: symmetric ALiBi sees only |p_i - p_j|, so it cannot tell a row from its mirror.
  perm = np.array([1, 0, 2, 3, 4, 5, 6, 7, 9, 8])
  out, out_perm = encode(cfg, params, ids), encode(cfg, params, ids[:, perm])
  assert np.abs(out_perm - out[:, perm]).max() > 1e-2


# ---- guarantees every encoding keeps -----------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_packed_row_equals_segments_run_alone(encoding):
  cfg = tiny(encoding)
  params = init_params(cfg)
  packed = encode(cfg, params, **PACKED)
  ids, types, segment_ids = PACKED["input_ids"], PACKED["token_type_ids"], PACKED["segment_ids"]
  for segment in (1, 2, 3):
    where = segment_ids[0] == segment
    alone = encode(cfg, params, ids[:, where], token_type_ids=types[:, where])
    np.testing.assert_allclose(packed[:, where], alone, atol=ATOL, err_msg=f"segment {segment}")


@pytest.mark.parametrize("variant", [
    dict(encoding_fusion="concat"), dict(encoding_fusion="concat", position_encoding="rotary"),
    dict(use_segment_embeddings=False, position_encoding="alibi"),
    dict(pre_layer_norm=True, hidden_act="geglu", use_bias=False, position_encoding="relative")],
    ids=["concat", "concat_rotary", "no_segments_alibi", "preln_geglu_nobias_relative"])
def test_packed_row_equals_segments_run_alone_for_fusion_and_block_variants(variant):
  variant = dict(variant)
  cfg = tiny(variant.pop("position_encoding", "learned"), **variant)
  params = init_params(cfg)
  packed = encode(cfg, params, **PACKED)
  ids, types, segment_ids = PACKED["input_ids"], PACKED["token_type_ids"], PACKED["segment_ids"]
  for segment in (1, 2, 3):
    where = segment_ids[0] == segment
    alone = encode(cfg, params, ids[:, where], token_type_ids=types[:, where])
    np.testing.assert_allclose(packed[:, where], alone, atol=ATOL, err_msg=f"segment {segment}")


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_padding_changes_no_other_token(encoding):
  cfg = tiny(encoding)
  params = init_params(cfg)
  # Lengths 3 and 10, as in the packed test, so the eager op cache is shared.
  ids = np.array([[5, 9, 3]])
  alone = encode(cfg, params, ids)
  padded = encode(cfg, params, np.concatenate([ids, np.zeros((1, 7), ids.dtype)], axis=1))
  np.testing.assert_allclose(padded[:, :3], alone, atol=ATOL)
  # Whatever the padding holds (tokens, types, positions), only segment_ids == 0 matters.
  junk = encode(cfg, params, np.array([[5, 9, 3, 7, 30, 2, 44, 1, 1, 13]]),
                token_type_ids=np.array([[0, 0, 0, 1, 1, 1, 0, 1, 0, 1]]),
                segment_ids=np.array([[1, 1, 1, 0, 0, 0, 0, 0, 0, 0]]),
                positions=np.array([[0, 1, 2, 9, 0, 4, 4, 15, 1, 2]]))
  np.testing.assert_allclose(junk[:, :3], alone, atol=ATOL)


def test_learned_cannot_extrapolate():
  cfg = tiny("learned")
  positions_lib.check_length(cfg, cfg.max_position_embeddings)
  with pytest.raises(ValueError, match="learned.*cannot extrapolate"):
    positions_lib.check_length(cfg, cfg.max_position_embeddings + 1)


@pytest.mark.parametrize("encoding", [e for e in ENCODINGS if e != "learned"])
def test_extrapolates_to_four_times_the_length(encoding):
  cfg = tiny(encoding)
  short = cfg.max_position_embeddings
  positions_lib.check_length(cfg, 4 * short)
  params = init_params(cfg)  # initialised at length 8, as for every other test
  ids = np.random.default_rng(0).integers(1, cfg.vocab_size, (1, 4 * short))
  out = encode(cfg, params, ids)
  assert out.shape == (1, 4 * short, cfg.hidden_size) and np.isfinite(out).all()


# ---- the bias and rotary paths under scan, remat, sharding and the fused backend --------------


@pytest.mark.parametrize("encoding", ["relative", "rotary", "alibi"])
def test_jit_scan_remat_and_logical_sharding_match_eager(encoding):
  """One bias/rotary for all layers: broadcast into nn.scan (under remat), constrained by logical
  axis rules inside jit, equals the eager unrolled stack on the packed row."""
  cfg = tiny(encoding, num_layers=2)
  params = init_params(cfg)
  layers = [params["encoder"][f"layer_{i}"] for i in range(cfg.num_layers)]
  scanned = dict(params, encoder={"layer": jax.tree_util.tree_map(
      lambda *xs: jnp.stack(xs), *layers)})
  want = encode(cfg, params, **PACKED)
  # The trainer's own mesh and rule table: heads (Q/K/V columns, the bias, MLP) split over
  # "tensor" on 4 of tests/conftest.py's fake CPU devices (1 where run without it).
  devices = jax.devices()[:4] if len(jax.devices()) >= 4 else jax.devices()[:1]
  mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": -1}, devices=devices)
  with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.DEFAULT_RULES):
    got = encode(cfg.replace(scan_layers=True, remat_policy="full"), scanned, jit=True, **PACKED)
  np.testing.assert_allclose(got, want, atol=ATOL)


@pytest.mark.parametrize("encoding", ["relative", "alibi"])
def test_bias_through_fused_dot_product_backend(encoding):
  cfg = tiny(encoding)
  params = init_params(cfg)
  fused = encode(cfg.replace(attention_backend="dot_product"), params, **PACKED)
  np.testing.assert_allclose(fused, encode(cfg, params, **PACKED), atol=ATOL)
