"""The model-side speed-ups the benchmark led to compute what the plain versions compute."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mebert.model.dropout import Dropout, keep_mask
from mebert.model.pretraining import tied_decoder


def test_tied_decoder_gradients_equal_autodiff():
  kx, kt, kb, kg = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(kx, (3, 5, 16))
  table = jax.random.normal(kt, (50, 16))
  bias = jax.random.normal(kb, (50,))
  g = jax.random.normal(kg, (3, 5, 50))

  def plain(x, table, bias):
    return jnp.einsum("...h,vh->...v", x, table, preferred_element_type=jnp.float32) + bias

  np.testing.assert_allclose(tied_decoder(x, table, bias), plain(x, table, bias), rtol=1e-6)
  ours = jax.vjp(tied_decoder, x, table, bias)[1](g)
  ref = jax.vjp(plain, x, table, bias)[1](g)
  for a, b in zip(ours, ref):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(64, 4, 128, 128), (3, 7), (1000,), ()])
def test_keep_mask_keeps_the_right_fraction(shape):
  mask = keep_mask(jax.random.key(1), shape, 0.9)
  assert mask.shape == shape and mask.dtype == jnp.bool_
  if np.prod(shape) > 10_000:
    assert abs(float(mask.mean()) - 0.9) < 0.002
    # Neighbours (which share a 64-bit hash) are independent: P(both kept) ~ 0.81.
    both = np.asarray(mask[..., 0::2] & mask[..., 1::2]).mean()
    assert abs(both - 0.81) < 0.003


def test_keep_mask_is_deterministic_and_key_dependent():
  a = keep_mask(jax.random.key(3), (8, 33), 0.5)
  np.testing.assert_array_equal(a, keep_mask(jax.random.key(3), (8, 33), 0.5))
  assert (a != keep_mask(jax.random.key(4), (8, 33), 0.5)).any()
  assert bool(keep_mask(jax.random.key(3), (8, 33), 1.0).all())
  # Another key implementation falls back to jax.random.bernoulli.
  rbg = keep_mask(jax.random.key(3, impl="rbg"), (8, 33), 0.5)
  assert rbg.shape == (8, 33)


def test_keep_mask_does_not_depend_on_sharding():
  mesh = jax.make_mesh((len(jax.devices()),), ("d",), devices=jax.devices())
  shape = (len(jax.devices()) * 2, 4, 16, 16)
  plain = jax.jit(lambda k: keep_mask(k, shape, 0.9))(jax.random.key(7))
  sharded = jax.jit(lambda k: keep_mask(k, shape, 0.9),
                    out_shardings=NamedSharding(mesh, P("d")))(jax.random.key(7))
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(sharded))


def test_dropout_module_scales_kept_values_and_is_identity_when_deterministic():
  x = jnp.ones((4, 256))
  y = Dropout(0.25, deterministic=False).apply({}, x, rngs={"dropout": jax.random.key(0)})
  kept = np.asarray(y) != 0
  np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.75, rtol=1e-6)
  assert 0.65 < kept.mean() < 0.85
  np.testing.assert_array_equal(Dropout(0.25, deterministic=True).apply({}, x), x)
  assert isinstance(Dropout(0.1), nn.Module)
