"""Position encodings behind one registry, chosen by `config.model.position_encoding`.

An encoding can act in three places, so each returns `PositionOutputs` with any of:
  - `embedding` [B, L, H]: fused with the token and segment embeddings (learned, sinusoidal);
  - `attention_bias` [B, heads, L, L]: added to the attention logits (relative, alibi);
  - `rotary` (sin, cos) [B, L, head_dim/2]: rotates queries and keys (rotary); `local_rotary` is
    the same at `local_rotary_base`, for the sliding-window layers when that base differs
    (ModernBERT: 160k global, 10k local).
Every encoding reads `positions` [B, L], which restart at 0 in each packed segment, and
`segment_ids` [B, L] (0 = padding), so packed rows behave like the segments run one by one.

  encoding    what it is                          acts on           parameters          extrapolates
  ----------  ----------------------------------  ----------------  ------------------  ------------
  learned     BERT's absolute table               input embedding   [max_pos, H]        no (*)
  sinusoidal  Vaswani et al.'s fixed sin/cos      input embedding   none                yes
  relative    T5's bucketed bias, bidirectional   attention logits  [32, heads] shared  yes (**)
  rotary      RoPE, base 10000, full head_dim     queries and keys  none                yes
  alibi       -slope_h * |p_i - p_j| (Press)      attention logits  none                yes
  none        no position information at all      nothing           none                yes
  (*) `check_length` raises beyond max_position_embeddings. (**) offsets >= 128 share one bucket.

The attention-logit encodings (relative, alibi) are computed once, here, from `positions`, and the
same [B, heads, L, L] float32 bias is added in every layer (broadcast, not scanned, under
`scan_layers`). Their distances are i - j within a segment; pairs across segments or with padding
get a meaningless value that the segment mask then overwrites. The relative table is the parameter
embeddings/position_embeddings/relative_attention_bias ([RELATIVE_NUM_BUCKETS, num_heads], logical
axes ("relpos_buckets", "heads")), shared by all layers as in T5.
"""

from __future__ import annotations

import functools
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
  local_rotary: tuple[jax.Array, jax.Array] | None = None  # None: local layers use `rotary`


REGISTRY: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
  def add(cls):
    REGISTRY[name] = cls
    return cls

  return add


def check_length(config: ModelConfig, seq_len: int) -> None:
  """Fails early, with the reason, when an encoding cannot represent `seq_len` positions."""
  cls = REGISTRY[config.position_encoding]
  rows = seq_len + config.position_offset
  if getattr(cls, "bounded_length", False) and rows > config.max_position_embeddings:
    offset = f" + model.position_offset={config.position_offset}" if config.position_offset else ""
    raise ValueError(
        f"sequence length {seq_len}{offset} exceeds model.max_position_embeddings="
        f"{config.max_position_embeddings}: the {config.position_encoding!r} position table cannot "
        "extrapolate; use a shorter data.seq_len or an encoding that extrapolates "
        "(sinusoidal, relative, rotary, alibi)")


@register("learned")
class LearnedPositions(nn.Module):
  """BERT's learned absolute position table (Hugging Face: embeddings.position_embeddings).

  Position p reads row p + position_offset: RoBERTa's table starts past the padding index
  (fairseq's make_positions: real tokens count from pad_token_id + 1), so its rows 0..pad_id
  are never read."""

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
        (cfg.max_position_embeddings, cfg.embedding_width), cfg.storage_dtype)
    rows = positions + cfg.position_offset if cfg.position_offset else positions
    return PositionOutputs(embedding=jnp.take(table, rows, axis=0).astype(cfg.compute_dtype))


@register("sinusoidal")
class SinusoidalPositions(nn.Module):
  """Vaswani et al.'s fixed sin/cos encoding: no parameters, defined for any position."""

  config: ModelConfig

  @nn.compact
  def __call__(self, positions, segment_ids) -> PositionOutputs:
    return PositionOutputs(
        embedding=sinusoid(positions, self.config.embedding_width).astype(self.config.compute_dtype))


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


# T5's defaults (Raffel et al. 2020; t5.1.0 and Hugging Face's T5Config): 32 buckets, half per
# direction; within each half, offsets below 8 get one bucket each, offsets 8..128 share 8 buckets
# spaced logarithmically, and every offset of 128 or more falls in the last bucket.
RELATIVE_NUM_BUCKETS = 32
RELATIVE_MAX_DISTANCE = 128


# The position helpers below are jitted so that, run eagerly (tests, notebooks), each is one
# compiled program rather than a dozen; inside a jitted model they are simply inlined.
@functools.partial(jax.jit, static_argnames=("num_buckets", "max_distance"))
def relative_position_bucket(relative_position: jax.Array, num_buckets: int = RELATIVE_NUM_BUCKETS,
                             max_distance: int = RELATIVE_MAX_DISTANCE) -> jax.Array:
  """T5's `_relative_position_bucket` with bidirectional=True; relative_position = key - query.

  Buckets [0, num_buckets/2) hold keys at or before the query, [num_buckets/2, num_buckets) keys
  after it (mesh-tensorflow's sign convention: n = -relative_position, ret += (n < 0) * half).
  """
  half = num_buckets // 2
  ret = (relative_position > 0).astype(jnp.int32) * half
  n = jnp.abs(relative_position).astype(jnp.int32)
  max_exact = half // 2
  is_small = n < max_exact
  # The clamp only keeps log() finite where is_small picks n anyway; float32, as T5 computes it.
  scaled = (jnp.log(jnp.maximum(n, max_exact).astype(jnp.float32) / max_exact)
            / math.log(max_distance / max_exact) * (half - max_exact))
  large = jnp.minimum(max_exact + scaled.astype(jnp.int32), half - 1)
  return ret + jnp.where(is_small, n, large)


def _bias_constraint(bias_BxNxLxL: jax.Array) -> jax.Array:
  # Names absent from the active logical rules stay unsharded; a no-op without rules.
  return nn.with_logical_constraint(bias_BxNxLxL, ("batch", "heads", "length", "kv_length"))


@register("relative")
class RelativePositionBias(nn.Module):
  """T5's bucketed relative position bias: a learned scalar per (bucket, head), shared by layers."""

  config: ModelConfig

  @nn.compact
  def __call__(self, positions, segment_ids) -> PositionOutputs:
    cfg = self.config
    table = self.param(
        "relative_attention_bias",
        nn.with_logical_partitioning(
            nn.initializers.normal(cfg.initializer_range), ("relpos_buckets", "heads")),
        (RELATIVE_NUM_BUCKETS, cfg.num_heads), cfg.storage_dtype)
    return PositionOutputs(attention_bias=_bias_constraint(relative_bias(table, positions)))


@jax.jit
def relative_bias(table_KxN: jax.Array, positions: jax.Array) -> jax.Array:
  """[B, N, L, L] float32: table[bucket(p_j - p_i), h] for query i and key j."""
  # T5's convention: memory (key) position minus context (query) position.
  relative_BxLxL = positions[:, None, :] - positions[:, :, None]
  buckets_BxLxL = relative_position_bucket(relative_BxLxL, num_buckets=table_KxN.shape[0])
  bias_BxLxLxN = jnp.take(table_KxN.astype(jnp.float32), buckets_BxLxL, axis=0)
  return jnp.transpose(bias_BxLxLxN, (0, 3, 1, 2))


@register("rotary")
class RotaryPositions(nn.Module):
  """RoPE (Su et al.): rotates each (q[2i], q[2i+1]) and (k[2i], k[2i+1]) by p * base^(-2i/d),
  base = model.rotary_base (10000 by default); sliding-window layers use model.local_rotary_base
  when it is set and differs (ModernBERT).

  No parameters; q . k after rotation depends on positions only through their difference.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, positions, segment_ids) -> PositionOutputs:
    cfg = self.config
    dim = cfg.head_dim
    if dim % 2:
      raise ValueError(
          f"rotary position encoding needs an even head_dim, got {dim} (hidden_size="
          f"{cfg.hidden_size}, num_heads={cfg.num_heads})")
    base = float(cfg.rotary_base)
    rotary = rotary_sin_cos(positions, dim=dim, base=base)
    local_base = float(cfg.local_rotary_base or base)
    local = None
    if local_base != base and cfg.has_local_layers:
      local = rotary_sin_cos(positions, dim=dim, base=local_base)
    return PositionOutputs(rotary=rotary, local_rotary=local)


@functools.partial(jax.jit, static_argnames=("dim", "base"))
def rotary_sin_cos(positions: jax.Array, dim: int, base: float = 10000.0):
  """(sin, cos) [..., dim/2] float32 of the angles p * base^(-2i/dim), i = 0 .. dim/2 - 1."""
  inv_freq = 1.0 / (base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  return jnp.sin(angles), jnp.cos(angles)


def alibi_slopes(num_heads: int) -> list[float]:
  """Press et al.'s head slopes: 2^(-8/n), 2^(-16/n), ... for n a power of two; otherwise the
  slopes of the power of two below n, then every other slope of the next power of two above."""

  def power_of_2(n):
    start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
    return [start * start ** i for i in range(n)]

  if math.log2(num_heads).is_integer():
    return power_of_2(num_heads)
  closest = 2 ** math.floor(math.log2(num_heads))
  return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][:num_heads - closest]


@register("alibi")
class AlibiPositions(nn.Module):
  """ALiBi for a bidirectional encoder: bias[h, i, j] = -slope_h * |p_i - p_j| (no parameters)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, positions, segment_ids) -> PositionOutputs:
    slopes_N = jnp.asarray(alibi_slopes(self.config.num_heads), jnp.float32)
    return PositionOutputs(attention_bias=_bias_constraint(alibi_bias(slopes_N, positions)))


@jax.jit
def alibi_bias(slopes_N: jax.Array, positions: jax.Array) -> jax.Array:
  """[B, N, L, L] float32: -slope_h * |p_i - p_j|."""
  distance_BxLxL = jnp.abs(positions[:, None, :] - positions[:, :, None]).astype(jnp.float32)
  return -slopes_N[None, :, None, None] * distance_BxLxL[:, None]
