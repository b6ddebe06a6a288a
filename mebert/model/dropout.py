"""Dropout that draws a quarter of the random bits of flax's `nn.Dropout`.

`nn.Dropout` calls `jax.random.bernoulli`, which hashes one Threefry-2x32 counter per element and
keeps 32 of the 64 bits it gets. Here each counter's 64 bits decide four elements, 16 bits each:
keep where the 16-bit value < round(keep_prob * 65536) (so keep_prob is honoured to within
2^-17). On CPU that makes BERT's dropout masks (attention probabilities and three hidden states
per layer) about 4x cheaper to draw, a few percent of a pretraining step.

The mask is a pure function of the key and each element's index (no dependence on how the array
is sharded), so a run is deterministic and gives the same masks on any mesh. Keys of another
implementation (e.g. "rbg") fall back to `jax.random.bernoulli`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p


def keep_mask(key: jax.Array, shape: tuple[int, ...], keep_prob: float) -> jax.Array:
  """bool[shape], True with probability keep_prob (to within 2^-17), from one typed key."""
  shape = tuple(shape)
  if str(jax.random.key_impl(key)) != "threefry2x32":
    return jax.random.bernoulli(key, keep_prob, shape)
  last = shape[-1] if shape else 1
  words = -(-last // 4)  # counters along the last axis; each gives 4 x 16 bits
  counter_shape = shape[:-1] + (words,)
  if int(np.prod(counter_shape)) >= 2**32:
    return jax.random.bernoulli(key, keep_prob, shape)
  counter = jnp.zeros(counter_shape, jnp.uint32)
  stride = 1
  for dim in reversed(range(len(counter_shape))):  # row-major element index, built from iotas
    counter = counter + jax.lax.broadcasted_iota(jnp.uint32, counter_shape, dim) * np.uint32(stride)
    stride *= counter_shape[dim]
  k = jax.random.key_data(key)
  high, low = threefry2x32_p.bind(k[0], k[1], counter, jnp.zeros_like(counter))
  threshold = np.uint32(min(int(round(keep_prob * 65536)), 65536))
  halves = [high & 0xFFFF, high >> 16, low & 0xFFFF, low >> 16]
  keep = jnp.stack([h < threshold for h in halves], axis=-1)  # [..., words, 4]
  keep = keep.reshape(shape[:-1] + (4 * words,))[..., :last]
  return keep.reshape(shape)


def dropout(key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
  """Zeroes x with probability `rate` (keep_mask's bits), scaling the kept values by 1/(1-rate):
  the pure function behind `Dropout`, for code that draws its key outside a module (a lax.cond)."""
  if rate == 0.0:
    return x
  keep_prob = 1.0 - rate
  keep = keep_mask(key, x.shape, keep_prob)
  return jax.lax.select(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros_like(x))


class Dropout(nn.Module):
  """Drop-in for `nn.Dropout(rate, deterministic=...)`: zeroes with probability `rate`, scales
  the kept values by 1 / (1 - rate); draws from the "dropout" RNG stream."""

  rate: float
  deterministic: bool = True
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, x):
    if self.deterministic or self.rate == 0.0:
      return x
    return dropout(self.make_rng(self.rng_collection), x, self.rate)
