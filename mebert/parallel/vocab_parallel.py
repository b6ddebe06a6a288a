"""Vocabulary-parallel cross-entropy for the MLM head, written with explicit collectives.

With tensor parallelism the MLM logits [B, P, V] are split over the vocabulary on the "tensor" mesh
axis (the tied decoder's word-embedding table is). A plain `log_softmax` + gather lets the SPMD
partitioner decide, and it may all-gather the full [B, P, V] logits onto every device. Here each
device keeps its vocabulary slice and only [B, P]-sized values cross the "tensor" axis
(Megatron-LM's vocab-parallel cross-entropy):

  max     = pmax_t(max_v logits)                              (a shift; no gradient flows through it)
  lse     = log(psum_t(sum_v exp(logits - max))) + max
  target  = psum_t(logit of the target on the one shard whose vocabulary range holds it, else 0)
  ce      = lse - target

`correct` (argmax == target, with jnp.argmax's first-index tie-break) comes from the same pass.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
VOCAB_AXIS = "tensor"


def cross_entropy_reference(logits, targets):
  """The plain jit version: (ce, correct) per position, float32."""
  logits = logits.astype(jnp.float32)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  ce = -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return ce, correct


def _local_cross_entropy(logits, targets, *, vocab_axis: str):
  """Runs per device on its [b, ..., V/t] slice; returns ([b, ...] ce, [b, ...] correct)."""
  logits = logits.astype(jnp.float32)
  local_vocab = logits.shape[-1]
  start = jax.lax.axis_index(vocab_axis) * local_vocab
  local_max = jnp.max(logits, axis=-1)
  # The shift cancels out of the value and the gradient; pmax has no derivative, so stop it first.
  shift = jax.lax.pmax(jax.lax.stop_gradient(local_max), vocab_axis)
  sum_exp = jax.lax.psum(jnp.sum(jnp.exp(logits - shift[..., None]), axis=-1), vocab_axis)
  lse = jnp.log(sum_exp) + shift

  local_target = targets.astype(jnp.int32) - start
  owned = (local_target >= 0) & (local_target < local_vocab)
  picked = jnp.take_along_axis(logits, jnp.clip(local_target, 0, local_vocab - 1)[..., None],
                               axis=-1)[..., 0]
  target_logit = jax.lax.psum(jnp.where(owned, picked, 0.0), vocab_axis)
  ce = lse - target_logit

  # Global argmax with the first-index tie-break of jnp.argmax: the smallest global index among
  # the shards whose local maximum is the global one.
  local_arg = jnp.argmax(logits, axis=-1).astype(jnp.int32) + start
  is_global_max = jax.lax.stop_gradient(local_max) >= shift
  global_arg = jax.lax.pmin(jnp.where(is_global_max, local_arg, jnp.iinfo(jnp.int32).max),
                            vocab_axis)
  correct = (global_arg == targets).astype(jnp.float32)
  return ce, correct


def _current_mesh():
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh is None or mesh.empty else mesh


def vocab_parallel_cross_entropy(logits, targets, *, mesh=None, vocab_axis: str = VOCAB_AXIS,
                                 batch_axes: tuple[str, ...] = BATCH_AXES):
  """(ce, correct), each shaped like `targets`, float32; equals `cross_entropy_reference`.

  logits: [B, ..., V] (any float dtype; computed in float32), targets: [B, ..., ] int.
  The leading dimension is split over `batch_axes`, the last over `vocab_axis`, others whole.
  `mesh` defaults to the one set with `jax.set_mesh` (the trainer's sharding context). Without a
  mesh, without `vocab_axis` in it, or when V or B do not divide evenly, this is the plain version.
  Works inside or outside jit, and under jax.grad.
  """
  mesh = mesh if mesh is not None else _current_mesh()
  if mesh is None or vocab_axis not in mesh.axis_names:
    return cross_entropy_reference(logits, targets)
  batch_axes = tuple(a for a in batch_axes if a in mesh.axis_names)
  batch_shards = 1
  for axis in batch_axes:
    batch_shards *= mesh.shape[axis]
  if logits.shape[-1] % mesh.shape[vocab_axis] or logits.shape[0] % batch_shards:
    return cross_entropy_reference(logits, targets)
  middle = (None,) * (targets.ndim - 1)
  batch_spec = batch_axes if batch_axes else None
  fn = jax.shard_map(
      functools.partial(_local_cross_entropy, vocab_axis=vocab_axis), mesh=mesh,
      in_specs=(P(batch_spec, *middle, vocab_axis), P(batch_spec, *middle)),
      out_specs=(P(batch_spec, *middle), P(batch_spec, *middle)),
      check_vma=False)
  return fn(logits, targets)
