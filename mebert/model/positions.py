"""Position encodings behind one registry, chosen by `config.model.position_encoding`.

An encoding can act in three places, so each returns `PositionOutputs` with any of:
  - `embedding` [B, L, H]: fused with the token and segment embeddings (learned, sinusoidal);
  - `attention_bias` [B, heads, L, L]: added to the attention logits (relative, alibi);
  - `rotary` (sin, cos) [B, L, head_dim/2]: rotates queries and keys (rotary).
Every encoding reads `positions` [B, L], which restart at 0 in each packed segment, and
`segment_ids` [B, L] (0 = padding), so packed rows behave like the segments run one by one.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from mebert.model.config import ModelConfig


@flax.struct.dataclass
class PositionOutputs:
  embedding: jax.Array | None = None
  attention_bias: jax.Array | None = None
  rotary: tuple[jax.Array, jax.Array] | None = None


REGISTRY: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
  def add(cls):
    REGISTRY[name] = cls
    return cls

  return add


def check_length(config: ModelConfig, seq_len: int) -> None:
  """Fails early, with the reason, when an encoding cannot represent `seq_len` positions."""
  cls = REGISTRY[config.position_encoding]
  if getattr(cls, "bounded_length", False) and seq_len > config.max_position_embeddings:
    raise ValueError(
        f"sequence length {seq_len} exceeds model.max_position_embeddings="
        f"{config.max_position_embeddings}: the {config.position_encoding!r} position table cannot "
        "extrapolate; use a shorter data.seq_len or an encoding that extrapolates "
        "(sinusoidal, relative, rotary, alibi)")


@register("learned")
class LearnedPositions(nn.Module):
  """BERT's learned absolute position table (Hugging Face: embeddings.position_embeddings)."""

  config: ModelConfig
  bounded_length = True

  @nn.compact
  def __call__(self, positions, segment_ids) -> PositionOutputs:
    cfg = self.config
    # Named like nn.Embed's table so the path reads embeddings/position_embeddings/embedding.
    table = self.param(
        "embedding",
        nn.with_logical_partitioning(
            nn.initializers.normal(cfg.initializer_range), ("position", "embed")),
        (cfg.max_position_embeddings, cfg.hidden_size), cfg.storage_dtype)
    return PositionOutputs(embedding=jnp.take(table, positions, axis=0).astype(cfg.compute_dtype))


@register("sinusoidal")
class SinusoidalPositions(nn.Module):
  """Vaswani et al.'s fixed sin/cos encoding: no parameters, defined for any position."""

  config: ModelConfig

  @nn.compact
  def __call__(self, positions, segment_ids) -> PositionOutputs:
    return PositionOutputs(
        embedding=sinusoid(positions, self.config.hidden_size).astype(self.config.compute_dtype))


def sinusoid(positions: jax.Array, dim: int) -> jax.Array:
  """PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d))."""
  inv_freq = jnp.exp(-math.log(10000.0) * jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  interleaved = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)
  return interleaved.reshape(*positions.shape, dim)


@register("none")
class NoPositions(nn.Module):
  """No position information: the encoder is then permutation-equivariant."""

  config: ModelConfig

  @nn.compact
  def __call__(self, positions, segment_ids) -> PositionOutputs:
    return PositionOutputs()
