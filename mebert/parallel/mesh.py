"""The device mesh and the logical-axis rules that place parameters and activations on it.

Three mesh axes, sized by `config.mesh.{data,fsdp,tensor}` (-1 = the rest of the devices):
  data   - pure data parallelism: parameters replicated, batch split;
  fsdp   - batch split too, and parameters/optimizer state split over their embedding dimension;
  tensor - Megatron-style: heads, MLP and vocabulary split, activations exchanged per block.
Model code names every dimension logically ("embed", "heads", "mlp", ...); the table below is the
only place that says which mesh axis each name lands on.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both

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


def mesh_shape(mesh_config, num_devices: int, platform: str | None = None) -> tuple[int, int, int]:
  """Resolves -1 and checks that the axes multiply to the device count, naming the culprit.
  `platform`: the devices' (default: this process's), for the message."""
  platform = platform or jax.default_backend()
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
      raise ValueError(f"mesh: {sizes} does not divide the {num_devices} {platform} devices")
    sizes[free[0]] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f"mesh: data*fsdp*tensor = {math.prod(sizes.values())} ({sizes}) "
                     f"but there are {num_devices} {platform} devices")
  return tuple(sizes[a] for a in MESH_AXES)


def make_mesh(mesh_config, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices), devices[0].platform if len(devices) else None)
  # Auto axes: Linen's logical constraints need them (an Explicit mesh turns them into asserts).
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules):
  """The mesh and logical-axis rules every jit, init and constraint of a run is traced under."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def logical_shardings(abstract_tree, mesh: Mesh, rules) -> object:
  """NamedShardings for a tree of (possibly LogicallyPartitioned) abstract values.

  A dimension that its mesh axes do not divide evenly (BERT's 30522-token vocabulary over a
  4-way "tensor" axis) cannot be an argument or output sharding of jit; such a dimension keeps only
  the leading mesh axes that do divide it (often none), with a warning, instead of failing.
  """
  specs = nn.get_partition_spec(abstract_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  shapes = strip_boxes(abstract_tree)
  return jax.tree.map(lambda s, a: _divisible(s, tuple(getattr(a, "shape", ()))), shardings, shapes,
                      is_leaf=lambda x: isinstance(x, NamedSharding))


def _divisible(sharding: NamedSharding, shape: tuple[int, ...]) -> NamedSharding:
  spec, changed = list(sharding.spec), False
  for dim, axes in enumerate(spec[:len(shape)]):
    if axes is None:
      continue
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    kept: list[str] = []
    for name in names:
      if shape[dim] % (math.prod(sharding.mesh.shape[a] for a in kept) * sharding.mesh.shape[name]):
        break
      kept.append(name)
    if len(kept) < len(names):
      changed = True
      spec[dim] = None if not kept else kept[0] if len(kept) == 1 else tuple(kept)
      _warn_indivisible(shape, dim, names, tuple(kept))
  return NamedSharding(sharding.mesh, P(*spec), memory_kind=sharding.memory_kind) if changed else sharding


@functools.lru_cache(maxsize=None)
def _warn_indivisible(shape, dim, names, kept) -> None:
  log.warning("dimension %d (size %d) of a %s parameter is not divisible by mesh axes %s; sharding "
              "it over %s instead (pad it, e.g. the vocabulary to a multiple of 128, to shard it)",
              dim, shape[dim], shape, names, kept or "nothing")


def partition_specs(shardings) -> dict[str, list]:
  """{"bert/embeddings/word_embeddings/embedding": ["tensor", "fsdp"], ...}: a flat, readable view
  of a tree of NamedShardings (the golden-file test and --mode=compile print it)."""
  flat = jax.tree_util.tree_flatten_with_path(
      shardings, is_leaf=lambda x: isinstance(x, NamedSharding))[0]
  out = {}
  for path, sharding in flat:
    key = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
    out[key] = [list(a) if isinstance(a, tuple) else a for a in sharding.spec]
  return out


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's rows into one global array split over the batch axes.

  Every process passes its own rows (train.batch_size / process_count of them: the data pipeline
  gives each process a disjoint share of the global stream); the global array holds all of them.
  """
  sharding = batch_sharding(mesh)
  shards_here = process_batch_shards(mesh)
  out = {}
  for key, value in local_batch.items():
    value = np.asarray(value)
    global_shape = (value.shape[0] * data_parallel_size(mesh) // shards_here,) + value.shape[1:]
    out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
  return out


@functools.lru_cache(maxsize=16)
def process_batch_shards(mesh: Mesh) -> int:
  """How many of the data*fsdp batch shards this process's devices hold.

  Checks the layout the trainer relies on: processes hold disjoint, equally many batch shards. A
  batch shard spanning processes means the "tensor" axis crosses hosts, where every process of a
  tensor group would have to read the same rows; that is refused with the fix named.
  """
  holders: dict[int, set[int]] = {}  # batch shard index -> processes holding a device of it
  data_dim, fsdp_dim = mesh.axis_names.index("data"), mesh.axis_names.index("fsdp")
  for position, device in np.ndenumerate(mesh.devices):
    shard = position[data_dim] * mesh.shape["fsdp"] + position[fsdp_dim]
    holders.setdefault(shard, set()).add(device.process_index)
  shared = {s: p for s, p in holders.items() if len(p) > 1}
  if shared:
    shard, processes = min(shared.items())
    raise ValueError(
        f"mesh {dict(mesh.shape)}: batch shard {shard} spans processes {sorted(processes)}; keep "
        f"the \"tensor\" axis within one process (mesh.tensor must divide the "
        f"{jax.local_device_count()} local devices)")
  counts = collections.Counter(next(iter(p)) for p in holders.values())
  if len(set(counts.values())) > 1:
    raise ValueError(f"mesh {dict(mesh.shape)}: processes hold unequal numbers of batch shards "
                     f"({dict(counts)})")
  here = counts.get(jax.process_index(), 0)
  if not here:
    raise ValueError(f"mesh {dict(mesh.shape)} holds no device of process {jax.process_index()}")
  return here


def strip_boxes(tree):
  """Removes LogicallyPartitioned boxes without applying their sharding constraints (those
  would fail on abstract values outside jit)."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree,
                      is_leaf=is_box)


def sharded_abstract(boxed, mesh: Mesh, rules):
  """(shardings, ShapeDtypeStructs carrying them) of a boxed abstract tree (jax.eval_shape of an
  init): the out_shardings of a jitted init and the target of a checkpoint restore."""
  shardings = logical_shardings(boxed, mesh, rules)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          strip_boxes(boxed), shardings)
  return shardings, abstract
