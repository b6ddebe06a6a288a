"""Splash attention under a mesh (shard_map over batch and heads) equals XLA attention: packed
segments, padding, the local window and the gradients, on the 8 fake CPU devices (interpret
mode)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import config_dict

from mebert.model import attention, splash
from mebert.parallel import mesh as mesh_lib

B, L, N, D = 4, 128, 2, 8


def _inputs():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(B, L, N, D)), jnp.float32) for _ in range(3))
  seg = np.zeros((B, L), np.int32)
  seg[:, :50], seg[:, 50:100] = 1, 2  # two packed segments, then padding
  seg[0, 100:] = 3  # row 0: a third segment, no padding
  seg[3, :] = 1  # row 3: one full-length segment
  return q, k, v, jnp.asarray(seg)


def _reference(q, k, v, seg, window=None):
  mask = attention.segment_mask(seg)
  if window is not None:  # query i sees keys i-left..i+right
    i, j = np.arange(L)[:, None], np.arange(L)[None, :]
    mask = mask & jnp.asarray((j >= i - window[0]) & (j <= i + window[1]))
  return attention.xla_attention(q, k, v, mask, None, lambda p: p, jnp.float32)


def _mesh():
  return mesh_lib.make_mesh(config_dict.ConfigDict(dict(data=2, fsdp=2, tensor=2)))


@pytest.mark.parametrize("window", [None, (8, 8)], ids=["full", "local"])
def test_splash_under_a_mesh_equals_xla_attention_with_gradients(window):
  q, k, v, seg = _inputs()
  real = (seg != 0)[..., None, None].astype(jnp.float32)  # padding rows' outputs are not used

  def loss(fn, q, k, v):
    out = fn(q, k, v)
    return jnp.sum(out * real * jnp.cos(jnp.arange(D, dtype=jnp.float32))), out

  reference = jax.grad(lambda *a: loss(lambda q, k, v: _reference(q, k, v, seg, window), *a),
                       argnums=(0, 1, 2), has_aux=True)
  with mesh_lib.sharding_context(_mesh(), mesh_lib.DEFAULT_RULES):
    sharded = jax.jit(jax.grad(
        lambda *a: loss(lambda q, k, v: splash.splash_attention(q, k, v, seg, window=window), *a),
        argnums=(0, 1, 2), has_aux=True))
    (dq, dk, dv), out = sharded(q, k, v)
    text = sharded.lower(q, k, v).as_text()
  (rdq, rdk, rdv), ref = reference(q, k, v)
  assert "shard_map" in text or "sdy.manual_computation" in text  # the kernel ran per device
  np.testing.assert_allclose(out * real, ref * real, atol=1e-5)
  for got, want in ((dq, rdq), (dk, rdk), (dv, rdv)):
    np.testing.assert_allclose(got, want, atol=1e-5)
  if window is not None:  # the window changes the answer (the test can fail)
    assert float(jnp.max(jnp.abs((ref - _reference(q, k, v, seg)) * real))) > 1e-2


def test_splash_without_a_mesh_and_bad_windows():
  q, k, v, seg = _inputs()
  out = jax.jit(lambda q, k, v: splash.splash_attention(q[:1], k[:1], v[:1], seg[:1]))(q, k, v)
  np.testing.assert_allclose(out, _reference(q[:1], k[:1], v[:1], seg[:1]), atol=1e-5)
  with pytest.raises(ValueError, match="window"):
    splash.splash_attention(q, k, v, seg, window=(4,))
  with pytest.raises(ValueError, match="multiple of 128, not 96"):
    splash.splash_attention(q[:, :96], k[:, :96], v[:, :96], seg[:, :96])


def test_auto_backend_follows_the_mesh_not_the_default_devices():
  """On a CPU mesh "auto" stays XLA; what decides is the traced mesh (a TPU slice's compile-only
  mesh picks splash: tests/parallel/test_tpu_compile.py)."""
  from mebert.model.config import ModelConfig

  cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
  with mesh_lib.sharding_context(_mesh(), mesh_lib.DEFAULT_RULES):
    seen = []
    jax.jit(lambda x: (seen.append(splash.traced_platform()), x)[1])(1.0)
    assert seen == ["cpu"]
    assert attention._resolve_backend(cfg, has_bias=False, dropout_active=False) == "xla"
