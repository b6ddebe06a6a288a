"""The device mesh and the logical-axis rules that place parameters and activations on it.

Three mesh axes, sized by `config.mesh.{data,fsdp,tensor}` (-1 = the rest of the devices):
  data   - pure data parallelism: parameters replicated, batch split;
  fsdp   - batch split too, and parameters/optimizer state split over their embedding dimension;
  tensor - Megatron-style: heads, MLP and vocabulary split, activations exchanged per block.
Model code names every dimension logically ("embed", "heads", "mlp", ...); the table below is the
only place that says which mesh axis each name lands on.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# (logical name, mesh axis or axes). Parameter names first, then activation-only names.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # parameters
    ("vocab", "tensor"),          # word embeddings and the MLM decoder: vocabulary-parallel
    ("embed", "fsdp"),            # FSDP shards every weight over its hidden dimension
    ("joined_kv", "tensor"),      # Q/K/V columns = heads x head_dim: head-parallel
    ("mlp", "tensor"),            # feed-forward columns
    ("heads", "tensor"),
    ("embed_out", None),
    ("fused_embed", None),
    ("position", None),
    ("type_vocab", None),
    ("relpos_buckets", None),
    ("classes", None),
    ("layers", None),             # scanned layers stay whole on every device
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("kv", None),
    ("kv_length", None),
)


def rules_from_config(mesh_config) -> tuple:
  """The rule table: the config's `mesh.rules` (a tuple of pairs) or the default above."""
  rules = mesh_config.get("rules", None) if hasattr(mesh_config, "get") else None
  return tuple(tuple(r) for r in rules) if rules else DEFAULT_RULES


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
  """Resolves -1 and checks that the axes multiply to the device count, naming the culprit."""
  sizes = {axis: int(mesh_config[axis]) for axis in MESH_AXES}
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise ValueError(f"mesh: only one axis may be -1, got {sizes}")
  for axis, size in sizes.items():
    if size == 0 or size < -1:
      raise ValueError(f"mesh.{axis}={size} must be a positive size or -1")
  known = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if num_devices % known:
      raise ValueError(f"mesh: {sizes} does not divide the {num_devices} devices")
    sizes[free[0]] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f"mesh: data*fsdp*tensor = {math.prod(sizes.values())} ({sizes}) "
                     f"but there are {num_devices} devices")
  return tuple(sizes[a] for a in MESH_AXES)


def make_mesh(mesh_config, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  # Auto axes: Linen's logical constraints need them (an Explicit mesh turns them into asserts).
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(("data", "fsdp")))


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def logical_shardings(abstract_tree, mesh: Mesh, rules) -> object:
  """NamedShardings for a tree of (possibly LogicallyPartitioned) abstract values."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's rows into one global array split over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def strip_boxes(tree):
  """Removes LogicallyPartitioned boxes without applying their sharding constraints (those
  would fail on abstract values outside jit)."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree,
                      is_leaf=is_box)
