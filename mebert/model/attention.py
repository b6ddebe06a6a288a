"""Multi-head scaled dot-product attention with padding and packed-segment masks.

Layout is [batch, length, heads, head_dim] throughout (B, L, N, D in names). Softmax runs in float32
whatever the compute dtype. Backends:
  - "xla": explicit einsums; supports attention dropout, any bias; the reference everywhere.
  - "dot_product": `jax.nn.dot_product_attention` (XLA's fused path).
  - "cudnn": the same with implementation="cudnn" (GPU, bf16/fp16, no attention dropout).
  - "splash": Pallas splash attention on TPU (segment ids, no bias or dropout; mebert.model.splash),
    under a mesh sharded over batch and heads with jax.shard_map.
  - "auto": cudnn on GPU and splash on TPU where their limits allow, else xla; the platform is the
    one of the mesh the program is traced for (jax.set_mesh), else this process's default.

Sliding-window (local) layers (model.local_attention_window, mebert.model.local_attention): "xla"
and "cudnn" run the blocked computation (linear in length; cuDNN has no bidirectional window),
"dot_product" passes `local_window_size`, "splash" its local mask. A layer's `local` flag is a
Python bool in an unrolled stack and a traced one under scan_layers, where a lax.cond picks the
local or the global computation (both compiled once; one runs).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from mebert.model.config import ModelConfig
from mebert.model import local_attention as local_lib
from mebert.model import splash
from mebert.model.dense import Dense
from mebert.model.dropout import Dropout, dropout
from mebert.model.splash import splash_attention, traced_platform

# The collection SelfAttention sows its [B, N, L, L] float32 probabilities into ("probs"), only when
# a caller makes it mutable (e.g. distillation's attention-map loss): apply(..., mutable=[it]).
# Asking forces the "xla" backend, the only one that materialises the probabilities.
ATTENTION_PROBS = "attention_probs"


def segment_mask(segment_ids: jax.Array, query_segment_ids: jax.Array | None = None) -> jax.Array:
  """[B, 1, Q, L] bool: a query attends to keys of its own segment; segment 0 is padding. Queries
  are every position (Q = L) unless their segment ids [B, Q] are given."""
  if query_segment_ids is None:
    query_segment_ids = segment_ids
  same = query_segment_ids[:, :, None] == segment_ids[:, None, :]
  return (same & (segment_ids != 0)[:, None, :])[:, None]


def apply_rotary(x_BxLxNxD: jax.Array, sin_BxLxR, cos_BxLxR) -> jax.Array:
  """Rotates pairs (x[2i], x[2i+1]) by the position angle (RoFormer's RoPE)."""
  x = x_BxLxNxD.astype(jnp.float32)
  even, odd = x[..., 0::2], x[..., 1::2]
  sin, cos = sin_BxLxR[:, :, None, :], cos_BxLxR[:, :, None, :]
  rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
  return rotated.reshape(x.shape).astype(x_BxLxNxD.dtype)


def _resolve_backend(cfg: ModelConfig, has_bias: bool, dropout_active: bool) -> str:
  backend = cfg.attention_backend
  if backend != "auto":
    return backend
  platform = traced_platform()  # the mesh's: a program compiled here for a TPU slice is TPU's
  if platform == "gpu" and cfg.dtype in ("bfloat16", "float16") and not has_bias and not dropout_active:
    return "cudnn"
  if platform == "tpu" and not has_bias and not dropout_active:
    return "splash"
  return "xla"


def xla_attention(q, k, v, mask, bias, dropout_fn, dtype, keep_probs=None):
  """The reference: scores in float32, masked with the dtype's minimum, softmax, weighted sum.
  `keep_probs`, when given, receives the float32 probabilities before dropout.

  q, k, v [B, L, N, D] are first laid out heads-major ([B, N, L, D]), so that both products are
  plain batched matrix products over contiguous [L, D] blocks; on the [B, L, N, D] layout XLA:CPU's
  strided batched products made BERT-base and bert-mini pretraining steps 1-2% slower (alternating
  A/B in one process, base-128 and mini-128 bench batches)."""
  q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # [B, N, L, D]
  scores_BxNxLxL = jnp.einsum("bnqd,bnkd->bnqk", q, k, preferred_element_type=jnp.float32)
  if bias is not None:
    scores_BxNxLxL = scores_BxNxLxL + bias.astype(jnp.float32)
  scores_BxNxLxL = jnp.where(mask, scores_BxNxLxL, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores_BxNxLxL, axis=-1)
  if keep_probs is not None:
    keep_probs(probs)
  probs = dropout_fn(probs.astype(dtype))
  return jnp.swapaxes(jnp.einsum("bnqk,bnkd->bnqd", probs, v), 1, 2)  # [B, L, N, D]


class SelfAttention(nn.Module):
  """Q, K, V projections and attention; Hugging Face: layer.attention.self.{query,key,value}."""

  config: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BxLxH, segment_ids, bias=None, rotary=None, query_positions=None,
               local=False):
    """query_positions [B, Q]: only those positions ask queries (keys and values are every
    position), and the output is [B, Q, H]: what the last layer of a sequence classifier needs.
    Not with position biases or rotary angles, which are laid out for every query. `local`: this
    layer attends within model.local_attention_window (a bool, or a traced bool under scan)."""
    cfg = self.config
    batch = x_BxLxH.shape[0]

    def project(name, x):
      y = Dense(
          cfg.hidden_size, use_bias=cfg.use_bias, dtype=cfg.compute_dtype,
          param_dtype=cfg.storage_dtype, name=name,
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.normal(cfg.initializer_range), ("embed", "joined_kv")),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("joined_kv",)))(x)
      y = y.reshape(x.shape[0], x.shape[1], cfg.num_heads, cfg.head_dim)
      return nn.with_logical_constraint(y, ("batch", "length", "heads", "kv"))

    query_segment_ids = None
    x_queries = x_BxLxH
    if query_positions is not None:
      if bias is not None or rotary is not None:
        raise ValueError("query_positions needs position encodings without attention biases or "
                         f"rotary angles, not position_encoding={cfg.position_encoding!r}")
      x_queries = jnp.take_along_axis(x_BxLxH, query_positions[..., None], axis=1)
      query_segment_ids = jnp.take_along_axis(segment_ids, query_positions, axis=1)
    q, k, v = project("query", x_queries), project("key", x_BxLxH), project("value", x_BxLxH)
    if rotary is not None:
      q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
    q = q * jnp.asarray(cfg.head_dim ** -0.5, q.dtype)

    dropout_active = not self.deterministic and cfg.attention_dropout_rate > 0
    keep_probs = None
    if self.is_mutable_collection(ATTENTION_PROBS) and not self.is_initializing():  # asked for
      keep_probs = lambda probs: self.sow(ATTENTION_PROBS, "probs", probs)
      backend = "xla"
    else:
      backend = _resolve_backend(cfg, bias is not None, dropout_active)
    if backend != "xla" and (bias is not None or dropout_active) and backend != "dot_product":
      raise ValueError(f"attention_backend={backend!r} supports neither attention biases nor "
                       "attention dropout; use 'xla' or set attention_dropout_rate=0")
    if backend == "splash" and query_positions is not None:
      backend = "xla"  # splash wants as many queries as keys
    if (backend == "splash" and cfg.attention_backend == "auto"
        and not splash.fits_blocks(k.shape[1])):
      backend = "xla"  # "auto" does not pick a kernel the length cannot tile
    mask = segment_mask(segment_ids, query_segment_ids)
    if local is False:
      out = self._global(backend, q, k, v, mask, bias, segment_ids, dropout_active, keep_probs)
    else:
      query_index = (query_positions if query_positions is not None
                     else jnp.arange(q.shape[1], dtype=jnp.int32))
      out = self._local(backend, local, q, k, v, mask, bias, segment_ids, query_index,
                        dropout_active, keep_probs)
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
    out = checkpoint_name(out, "attention_out")
    return out.reshape(batch, q.shape[1], cfg.hidden_size)

  def _global(self, backend, q, k, v, mask, bias, segment_ids, dropout_active, keep_probs):
    cfg = self.config
    if backend == "splash":
      return splash_attention(q, k, v, segment_ids)
    if backend in ("dot_product", "cudnn") and not dropout_active:
      return jax.nn.dot_product_attention(
          q, k, v, bias=bias, mask=mask,
          scale=1.0, implementation="cudnn" if backend == "cudnn" else None)
    drop = Dropout(cfg.attention_dropout_rate, deterministic=not dropout_active)
    return xla_attention(q, k, v, mask, bias, drop, cfg.compute_dtype, keep_probs)

  def _local(self, backend, local, q, k, v, mask, bias, segment_ids, query_index, dropout_active,
             keep_probs):
    """A sliding-window layer, or (traced `local`) a layer that is one or the other."""
    cfg = self.config
    half = cfg.half_window
    static = isinstance(local, bool)
    dense = (keep_probs is not None or bias is not None or backend == "dot_product"
             or q.shape[1] != k.shape[1])  # Q < L: the last layer of a classifier
    if dense:  # one dense computation whose mask narrows to the band where the layer is local
      banded = local_lib.local_mask(mask, query_index, half, local)
      if backend == "dot_product" and not dropout_active:
        window = static and q.shape[1] == k.shape[1]  # the query at row i is position i
        return jax.nn.dot_product_attention(
            q, k, v, bias=bias, mask=mask if window else banded, scale=1.0,
            local_window_size=(half, half) if window else None)
      drop = Dropout(cfg.attention_dropout_rate, deterministic=not dropout_active)
      return xla_attention(q, k, v, banded, bias, drop, cfg.compute_dtype, keep_probs)
    if backend == "splash":
      local_fn = lambda q, k, v: splash_attention(q, k, v, segment_ids, window=(half, half))
      global_fn = lambda q, k, v: splash_attention(q, k, v, segment_ids)
      return local_fn(q, k, v) if static else jax.lax.cond(local, local_fn, global_fn, q, k, v)
    # xla or cudnn: the blocked computation where it saves work, else the dense band.
    rate = cfg.attention_dropout_rate if dropout_active else 0.0
    key = self.make_rng("dropout") if rate else None
    drop = lambda probs: dropout(key, probs, rate) if rate else probs

    def local_fn(q, k, v):
      if local_lib.blocked_pays(k.shape[1], half):
        return local_lib.blocked_local_attention(q, k, v, segment_ids, half, drop,
                                                 cfg.compute_dtype)
      return xla_attention(q, k, v, local_lib.local_mask(mask, query_index, half), None, drop,
                           cfg.compute_dtype)

    def global_fn(q, k, v):
      if backend == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=1.0, implementation="cudnn")
      return xla_attention(q, k, v, mask, None, drop, cfg.compute_dtype)

    return local_fn(q, k, v) if static else jax.lax.cond(local, local_fn, global_fn, q, k, v)
