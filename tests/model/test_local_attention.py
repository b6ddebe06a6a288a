"""Sliding-window attention: the band excludes what it should, a whole-row window is global
attention, the blocked computation equals the dense band, packed segments stay apart, and a
scanned stack follows the same per-layer pattern as an unrolled one."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mebert.model import attention, local_attention
from mebert.model.attention import ATTENTION_PROBS
from mebert.model.config import ModelConfig
from mebert.model.encoder import BertModel

LENGTH = 64  # with half-window 8 the blocks are 16 wide: the blocked path runs (4 * 16 <= 64)
TINY = dict(vocab_size=50, hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64,
            max_position_embeddings=LENGTH, dropout_rate=0.0, attention_dropout_rate=0.0,
            position_encoding="rotary", use_segment_embeddings=False, pre_layer_norm=True)


def _batch(seed=0):
  """Two rows: one sequence with 6 padding slots; three packed segments and 4 padding slots."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, 50, (2, LENGTH)).astype(np.int32)
  seg = np.ones((2, LENGTH), np.int32)
  seg[0, -6:] = 0
  seg[1] = [1] * 20 + [2] * 25 + [3] * 15 + [0] * 4
  pos = np.zeros((2, LENGTH), np.int32)
  pos[0] = np.arange(LENGTH)
  pos[1] = np.concatenate([np.arange(20), np.arange(25), np.arange(15), np.zeros(4)])
  return jnp.asarray(ids), jnp.asarray(seg), jnp.asarray(pos)


def _run(cfg, params, ids, seg, pos, probs=False):
  model = BertModel(cfg)
  if probs:
    out, state = jax.jit(lambda p, i, s, q: model.apply(p, i, None, s, q, mutable=[ATTENTION_PROBS]))(
        params, ids, seg, pos)
    return out.sequence_output, state[ATTENTION_PROBS]
  return jax.jit(lambda p, i, s, q: model.apply(p, i, None, s, q).sequence_output)(
      params, ids, seg, pos)


def _init(cfg):
  ids, seg, pos = _batch()
  return nn.unbox(BertModel(cfg).init(jax.random.key(0), ids, None, seg, pos))


def test_pattern_follows_modernbert():
  cfg = ModelConfig(**{**TINY, "num_layers": 7}, local_attention_window=16,
                    global_attention_every=3)
  assert [cfg.layer_is_local(i) for i in range(7)] == [False, True, True, False, True, True, False]
  assert not ModelConfig(**TINY).has_local_layers
  every = ModelConfig(**TINY, local_attention_window=16, global_attention_every=0)
  assert all(every.layer_is_local(i) for i in range(3))
  with pytest.raises(ValueError, match="local_attention_window=-2"):
    ModelConfig(**TINY, local_attention_window=-2)


def test_keys_outside_the_window_get_no_weight():
  cfg = ModelConfig(**TINY, local_attention_window=16, global_attention_every=2)
  ids, seg, pos = _batch()
  _, sown = _run(cfg, _init(cfg), ids, seg, pos, probs=True)
  layers = [sown["encoder"][f"layer_{i}"]["attention"]["self"]["probs"][0] for i in range(3)]
  distance = np.abs(np.arange(LENGTH)[:, None] - np.arange(LENGTH)[None, :])
  seg = np.asarray(seg)
  same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
  for i, probs in enumerate(layers):  # [B, N, L, L]
    probs = np.asarray(probs)
    real = seg != 0
    np.testing.assert_allclose(probs.sum(-1)[np.broadcast_to(real[:, None], probs.shape[:3])], 1,
                               atol=1e-5)
    outside = np.broadcast_to((~same & real[:, :, None])[:, None], probs.shape)
    assert np.all(probs[outside] == 0), f"layer {i}: weight across segments or onto padding"
    if i == 1:  # local: nothing beyond 8 positions, something right at the edge
      far = np.broadcast_to(((distance > 8)[None] & real[:, :, None])[:, None], probs.shape)
      assert np.all(probs[far] == 0)
      assert np.all(probs[:, :, 30, 38] > 0) and np.all(probs[:, :, 30, 22] > 0)
    else:  # global: the far keys of the same segment are seen
      assert np.all(probs[0, :, 0, 40] > 0)


@pytest.mark.parametrize("backend", ["xla", "dot_product"])
def test_window_covering_the_row_equals_global_attention(backend):
  base = ModelConfig(**TINY, attention_backend=backend)
  params = _init(base)
  ids, seg, pos = _batch()
  want = _run(base, params, ids, seg, pos)
  # A window of 2 * LENGTH covers every key (the dense band; the blocked path is checked below).
  wide = base.replace(local_attention_window=2 * LENGTH, global_attention_every=0)
  got = _run(wide, params, ids, seg, pos)
  real = np.asarray(seg) != 0
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=2e-5)


def test_blocked_path_equals_the_dense_band_and_covers_the_row():
  """At half-window >= the longest segment the blocked computation is global attention; at a
  narrow window it equals the dense band (dot_product's local_window_size)."""
  q, k, v = (jax.random.normal(jax.random.key(i), (2, LENGTH, 2, 8)) for i in range(3))
  _, seg, _ = _batch()
  mask = attention.segment_mask(seg)
  ident = lambda p: p
  dense_global = attention.xla_attention(q, k, v, mask, None, ident, jnp.float32)
  real = np.asarray(seg) != 0
  for half in (8, 16):
    assert local_attention.blocked_pays(LENGTH, half)
    blocked = local_attention.blocked_local_attention(q, k, v, seg, half, ident, jnp.float32)
    band = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=1.0,
                                        local_window_size=(half, half))
    np.testing.assert_allclose(np.asarray(blocked)[real], np.asarray(band)[real], atol=1e-5)
  # Half-window 16 with 16-wide blocks: the first row's segment is 58 long, so it differs from
  # global; row 1's segments are 20, 25, 15 long: half-window 25 would cover each of them.
  covering = local_attention.blocked_local_attention(q, k, v, seg, 25, ident, jnp.float32)
  np.testing.assert_allclose(np.asarray(covering)[1][real[1]],
                             np.asarray(dense_global)[1][real[1]], atol=1e-5)


def test_packed_segments_stay_isolated_under_local_attention():
  cfg = ModelConfig(**TINY, local_attention_window=16, global_attention_every=0)
  params = _init(cfg)
  ids, seg, pos = _batch()
  out = _run(cfg, params, ids, seg, pos)
  changed = ids.at[1, 20:45].set((ids[1, 20:45] + 7) % 45 + 5)  # only segment 2 of row 1
  out2 = _run(cfg, params, changed, seg, pos)
  np.testing.assert_allclose(out2[1, :20], out[1, :20], atol=1e-6)
  np.testing.assert_allclose(out2[1, 45:60], out[1, 45:60], atol=1e-6)
  assert not np.allclose(out2[1, 20:45], out[1, 20:45])


def test_scanned_layers_follow_the_unrolled_pattern():
  """ModernBERT's arrangement: global layer 0, local layers 1-2 with their own rotary base, and
  no attention LayerNorm in layer 0; scan and unrolled agree (the scan picks by layer index)."""
  from mebert.interop import hf_names

  cfg = ModelConfig(**TINY, local_attention_window=16, global_attention_every=3,
                    rotary_base=160000.0, local_rotary_base=10000.0,
                    first_layer_attention_norm=False, layer_norm_bias=False, use_bias=False)
  params = jax.tree.map(np.asarray, _init(cfg))["params"]
  assert "bias" not in params["encoder"]["final_LayerNorm"]
  ids, seg, pos = _batch()
  unrolled = _run(cfg, {"params": params}, ids, seg, pos)
  stacked = hf_names.stack_layers({"bert": params}, cfg.num_layers)["bert"]
  scanned = _run(cfg.replace(scan_layers=True), {"params": stacked}, ids, seg, pos)
  real = np.asarray(seg) != 0
  np.testing.assert_allclose(np.asarray(scanned)[real], np.asarray(unrolled)[real], atol=2e-5)
  # The pattern matters: all-global layers compute something else.
  other = _run(cfg.replace(local_attention_window=0), {"params": params}, ids, seg, pos)
  assert not np.allclose(np.asarray(other)[real], np.asarray(unrolled)[real], atol=1e-3)


def test_splash_local_mask_equals_xla_on_a_2x2x2_mesh():
  """The splash kernel's local mask (interpret mode on CPU, sharded over the 8 fake devices)
  against the XLA blocked band."""
  from ml_collections import config_dict

  from mebert.model import splash
  from mebert.parallel import mesh as mesh_lib

  length = 128  # splash's blocks are 128 long
  q, k, v = (jax.random.normal(jax.random.key(i), (4, length, 2, 8)) for i in range(3))
  seg = np.ones((4, length), np.int32)
  seg[0, -6:] = 0
  seg[1] = [1] * 40 + [2] * 50 + [3] * 30 + [0] * 8
  seg = jnp.asarray(seg)
  want = local_attention.blocked_local_attention(q, k, v, seg, 8, lambda p: p, jnp.float32)
  mesh = mesh_lib.make_mesh(config_dict.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2}))
  with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.DEFAULT_RULES):
    got = jax.jit(lambda q, k, v, s: splash.splash_attention(q, k, v, s, window=(8, 8)))(
        q, k, v, seg)
  real = np.asarray(seg) != 0
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-4)
