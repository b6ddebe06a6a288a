"""Sliding-window (local) attention: the band mask, and a blocked computation whose cost grows
linearly with length.

ModernBERT's rule (Hugging Face's bidirectional sliding-window mask): in a local layer the query at
row index i attends the key at j when |i - j| <= half_window (= local_attention_window // 2) and
both belong to the same segment. Row indices, not position ids: in a packed row the segment mask
already separates the segments, and within one segment the two differ by a constant.

A dense mask costs as much as global attention. `blocked_local_attention` instead cuts the row into
blocks of `block >= half_window` queries; block b can only see keys of blocks b-1, b and b+1, so
its scores are [block, 3 * block] rather than [block, L]: O(L * block) work and memory instead of
O(L^2). Inside the three blocks the exact band and segment masks apply, so the result is that of
the dense masked softmax at every real (non-padding) query.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Blocks narrower than this waste the matrix units on tiny products; wider blocks only compute
# more masked-out scores, so a small half-window still gets blocks of this size.
MIN_BLOCK = 16


def block_size(half_window: int) -> int:
  return max(half_window, MIN_BLOCK)


def blocked_pays(length: int, half_window: int) -> bool:
  """Whether the blocked computation does less work than the dense one: 3 blocks of keys per
  query against `length` keys (with a margin, since the blocks also cost a few copies)."""
  return 4 * block_size(half_window) <= length


def band_mask(query_index: jax.Array, length: int, half_window: int) -> jax.Array:
  """[..., Q, L] bool: |query_index - j| <= half_window for key indices j < length."""
  keys = jnp.arange(length, dtype=jnp.int32)
  return jnp.abs(query_index[..., :, None].astype(jnp.int32) - keys) <= half_window


def local_mask(mask_Bx1xQxL: jax.Array, query_index: jax.Array, half_window: int,
               local=True) -> jax.Array:
  """The segment mask narrowed to the band; `local` may be a traced bool (a scanned layer's
  pattern), in which case the band applies only where it is True."""
  band = band_mask(query_index, mask_Bx1xQxL.shape[-1], half_window)
  band = band[:, None] if band.ndim == 3 else band[None, None]
  if not isinstance(local, bool):
    band = band | ~local
  return mask_Bx1xQxL & band


def blocked_local_attention(q, k, v, segment_ids, half_window: int, dropout_fn, dtype):
  """Local attention of q, k, v [B, L, N, D] (q already scaled) in blocks; see the module doc.

  segment_ids [B, L] (0 = padding). `dropout_fn` is applied to the float32 probabilities cast to
  `dtype`, as in the dense path. Returns [B, L, N, D]. Padding queries get an arbitrary value
  (as in the dense path, where they attend to nothing), which nothing reads."""
  batch, length, heads, dim = q.shape
  c = block_size(half_window)
  blocks = -(-length // c)
  tail = blocks * c - length
  # Heads-major, as in xla_attention: the products run over contiguous [c, D] blocks.
  q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # [B, N, L, D]

  def windows(x, axis):
    """Keys of blocks b-1, b, b+1 for every block b: one block of padding on each side."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (c, tail + c)
    x = jnp.pad(x, pad)
    x = x.reshape(*x.shape[:axis], blocks + 2, c, *x.shape[axis + 1:])
    take = lambda start: jax.lax.slice_in_dim(x, start, start + blocks, axis=axis)
    return jnp.concatenate([take(0), take(1), take(2)], axis=axis + 1)

  q_blocks = jnp.pad(q, ((0, 0), (0, 0), (0, tail), (0, 0))).reshape(batch, heads, blocks, c, dim)
  k_windows, v_windows = windows(k, 2), windows(v, 2)  # [B, N, nb, 3c, D]
  key_segments = windows(segment_ids, 1)  # [B, nb, 3c]; the padding blocks are segment 0
  query_segments = jnp.pad(segment_ids, ((0, 0), (0, tail))).reshape(batch, blocks, c)

  query_index = jnp.arange(blocks * c, dtype=jnp.int32).reshape(blocks, c)
  key_index = (jnp.arange(blocks, dtype=jnp.int32)[:, None] * c - c
               + jnp.arange(3 * c, dtype=jnp.int32)[None, :])  # [nb, 3c], may be < 0 or >= L
  band = jnp.abs(query_index[:, :, None] - key_index[:, None, :]) <= half_window  # [nb, c, 3c]
  same = ((query_segments[..., :, None] == key_segments[..., None, :])
          & (key_segments != 0)[..., None, :])  # [B, nb, c, 3c]
  mask = (band[None] & same)[:, None]  # [B, 1, nb, c, 3c]

  scores = jnp.einsum("bnkqd,bnksd->bnkqs", q_blocks, k_windows,
                      preferred_element_type=jnp.float32)
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = dropout_fn(jax.nn.softmax(scores, axis=-1).astype(dtype))
  out = jnp.einsum("bnkqs,bnksd->bnkqd", probs, v_windows)  # [B, N, nb, c, D]
  out = out.reshape(batch, heads, blocks * c, dim)[:, :, :length]
  return jnp.swapaxes(out, 1, 2)  # [B, L, N, D]
