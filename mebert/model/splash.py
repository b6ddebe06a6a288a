"""Pallas splash attention (TPU), sharded over the mesh in context, with an optional local window.

The kernel is a Mosaic custom call, which XLA cannot partition: under a mesh it must run inside
`jax.shard_map`, each device on its own rows (the batch axes) and heads (the tensor axis), as TPU
trainers in the field do. Keys and values are never split along the sequence, so no device needs
another's q, k or v. On any platform but TPU the kernel runs in Pallas' interpret mode (slow,
exact): which one is decided by the devices of the mesh the program is traced for, not by this process's
default devices, so a program compiled here for a TPU slice gets the real kernel.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

# The logical layout of q, k, v and the output: [B, L, N, D].
_QKV_AXES = ("batch", "length", "heads", "kv")


def traced_platform() -> str:
  """Platform of the devices the current trace is for: the mesh in context (jax.set_mesh, also
  inside jit), else this process's default devices."""
  mesh = jax.sharding.get_abstract_mesh()
  device = getattr(mesh, "abstract_device", None)
  if not mesh.empty and device is not None:
    return device.platform
  return jax.devices()[0].platform


def fits_blocks(length: int) -> bool:
  """Whether the kernel can tile a sequence of this length: its blocks are multiples of 128."""
  return length % 128 == 0


def _block_sizes(sa, length: int):
  block = min(512, length)
  return sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                       block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block,
                       block_kv_dq=block)


def _local_attention(q, k, v, segment_ids, window, interpret: bool):
  """One device's rows and heads: q, k, v [b, L, n, D], segment_ids [b, L]."""
  from jax.experimental.pallas.ops.tpu import splash_attention as sa

  _, length, heads, _ = q.shape
  if window is None:
    head_mask = sa.FullMask((length, length))
  else:
    head_mask = sa.LocalMask((length, length), window_size=tuple(window), offset=0)
  kernel = sa.make_splash_mha_single_device(
      sa.MultiHeadMask([head_mask] * heads), block_sizes=_block_sizes(sa, length),
      interpret=interpret)
  # Padding is segment 0, so it never attends across to real tokens; the kernel wants [N, L, D].
  to_nld = functools.partial(jnp.swapaxes, axis1=0, axis2=1)
  out = jax.vmap(lambda qq, kk, vv, s: kernel(
      to_nld(qq), to_nld(kk), to_nld(vv), segment_ids=sa.SegmentIds(q=s, kv=s)))(
          q, k, v, segment_ids)
  return jnp.swapaxes(out, 1, 2)


def splash_attention(q, k, v, segment_ids, window: tuple[int, int] | None = None):
  """Attention of q, k, v [B, L, N, D] (q already scaled) within packed segments (segment_ids
  [B, L], 0 = padding). window=(left, right): query i attends only keys i-left..i+right (both
  inclusive), in every head: ModernBERT's local layers with a window of w tokens are (w//2, w//2).

  Under a mesh (jax.set_mesh) the kernel runs in a shard_map whose layout comes from the logical
  axis rules in context ("batch" and "heads"); the sequence must not be split.
  """
  if window is not None and (len(window) != 2 or min(window) < 0):
    raise ValueError(f"splash attention window={window!r}: expected (left, right) >= 0")
  if not fits_blocks(q.shape[1]):
    raise ValueError(f"splash attention needs a sequence length that is a multiple of 128, not "
                     f"{q.shape[1]}; use attention_backend='xla' or 'auto'")
  interpret = traced_platform() != "tpu"
  local = functools.partial(_local_attention, window=window, interpret=interpret)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return local(q, k, v, segment_ids)
  batch_axes, length_axes, heads_axes, kv_axes = nn.logical_to_mesh_axes(_QKV_AXES)
  if length_axes is not None or kv_axes is not None:
    raise ValueError(f"splash attention under a mesh splits only batch and heads, but the logical "
                     f"axis rules map (length, kv) to {length_axes!r}, {kv_axes!r}")
  # A dimension the mesh axes do not divide (the one-row example batch of an init) stays whole.
  batch_axes = _dividing(mesh, batch_axes, q.shape[0])
  heads_axes = _dividing(mesh, heads_axes, q.shape[2])
  spec = P(batch_axes, None, heads_axes, None)
  return jax.shard_map(local, in_specs=(spec, spec, spec, P(batch_axes, None)), out_specs=spec,
                       check_vma=False)(q, k, v, segment_ids)


def _dividing(mesh, axes, size: int):
  """The leading mesh axes of `axes` whose product divides `size` (None if none does)."""
  names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  kept, product = [], 1
  for name in names:
    if size % (product * mesh.shape[name]):
      break
    kept.append(name)
    product *= mesh.shape[name]
  return None if not kept else kept[0] if len(kept) == 1 else tuple(kept)
