"""Post-training int8 weight quantization for inference: per output channel, symmetric.

Every Dense kernel ([in, out], or [layers, in, out] when the layers are scanned) becomes a `QArray`:
int8 values and one float32 scale per output column (per layer), scale = max|w| / 127 over the
input axis, q = round(w / scale) clipped to [-127, 127]; so |w - q * scale| <= scale / 2 in every
channel. Embedding tables ([rows, H]: words, positions, segments) are quantized per row, as each
row is looked up on its own (and the tied MLM decoder's output channels are the word rows).
Biases and LayerNorm parameters stay float (a fraction of a percent of BERT's bytes).

Only the int8 tree lives in memory between calls: `dequantizing(fn, dtype)` wraps a function of
the float params so that, inside the jitted computation, each QArray becomes `q * scale` in the
compute dtype just before the model uses it. Weight-only: activations and matmuls stay in the
compute dtype, so the outputs differ from fp32 by the rounding of the weights alone.

  qparams = quantize_params(params)                       # host or device arrays
  fn = jax.jit(dequantizing(predict, jnp.float32))        # fn(qparams, batch)
  weight_bytes(qparams) / weight_bytes(params)            # ~0.25-0.26 for BERT-family models
  qparams, qshardings = quantize_sharded(params, shardings)   # on a mesh: stays sharded

The arithmetic lives here, beside the model, because every layer above uses it: mebert.embed,
fine-tuned eval/predict (mebert.tasks.quantized), quantization-aware fine-tuning (model/qat.py) and
pretraining eval (mebert.compress.quantize, which also re-exports this module's API).
"""

from __future__ import annotations

import functools
import logging

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MODES = ("none", "int8")
QMAX = 127  # symmetric: -127..127, so -q is always representable


@flax.struct.dataclass
class QArray:
  """int8 values with float32 scales broadcastable to them (size 1 on the reduced axis)."""

  value: jax.Array  # int8, the original shape
  scale: jax.Array  # float32
  axis: int = flax.struct.field(pytree_node=False, default=-2)  # the axis the scale reduced over

  def dequantize(self, dtype=jnp.float32):
    return (self.value.astype(jnp.float32) * self.scale).astype(dtype)

  @property
  def shape(self):
    return self.value.shape

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.value.shape)) * 1 + int(np.prod(self.scale.shape)) * 4


def check_mode(mode: str | None) -> str:
  """'' / None / 'none' -> 'none'; 'int8' -> 'int8'; anything else fails naming the choices."""
  mode = (mode or "none").lower()
  if mode not in MODES:
    raise ValueError(f"quantize={mode!r} is not one of {MODES}")
  return mode


def quantize_array(w, axis: int) -> QArray:
  """Symmetric int8 with one scale per slice along every axis but `axis` (reduced)."""
  w = jnp.asarray(w, jnp.float32)
  amax = jnp.max(jnp.abs(w), axis=axis, keepdims=True)
  scale = jnp.where(amax > 0, amax / QMAX, 1.0).astype(jnp.float32)
  q = jnp.clip(jnp.round(w / scale), -QMAX, QMAX).astype(jnp.int8)
  return QArray(q, scale, axis)


def _name(path) -> str:
  last = path[-1] if path else None
  return str(getattr(last, "key", getattr(last, "name", last)))


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def quantized_axis(path, leaf, embeddings: bool = True,
                   exclude: tuple[str, ...] = ()) -> int | None:
  """The axis to reduce over for this leaf, or None to keep it float: Dense kernels reduce over
  their input axis (-2; a scanned layer axis stays), embedding tables over their width (-1)."""
  ndim = len(getattr(leaf, "shape", ()))
  if ndim < 2 or any(e in _path_str(path) for e in exclude):
    return None
  name = _name(path)
  if name == "kernel":
    return -2
  if name == "embedding" and embeddings:
    return -1
  return None


def quantize_params(params, *, embeddings: bool = True, exclude: tuple[str, ...] = ()):
  """The same tree with Dense kernels (and, with `embeddings`, Embed tables) as QArrays."""
  def one(path, leaf):
    axis = quantized_axis(path, leaf, embeddings, exclude)
    return leaf if axis is None else quantize_array(leaf, axis)
  return jax.tree_util.tree_map_with_path(one, params)


def _is_q(x) -> bool:
  return isinstance(x, QArray)


def dequantize(qparams, dtype=jnp.float32):
  """QArrays -> dense arrays in `dtype`; other leaves unchanged. Call inside jit."""
  return jax.tree.map(lambda x: x.dequantize(dtype) if _is_q(x) else x, qparams, is_leaf=_is_q)


def dequantizing(fn, dtype=jnp.float32):
  """fn(params, *args) -> f(qparams, *args) that dequantizes the weights inside the trace."""
  @functools.wraps(fn)
  def wrapped(qparams, *args, **kwargs):
    return fn(dequantize(qparams, dtype), *args, **kwargs)
  return wrapped


def weight_bytes(params) -> int:
  """Bytes of all parameters as stored (int8 values + float32 scales for QArrays)."""
  leaves = jax.tree.leaves(params, is_leaf=_is_q)
  return sum(x.nbytes if _is_q(x) else int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in leaves)


def fp32_bytes(params) -> int:
  """Bytes the same parameters take in float32."""
  leaves = jax.tree.leaves(params, is_leaf=_is_q)
  return sum(int(np.prod(x.shape)) * 4 for x in leaves)


def report(qparams) -> dict:
  """{"weight_bytes", "fp32_bytes", "weight_bytes_ratio", "quantized_fraction"} of a tree."""
  leaves = jax.tree.leaves(qparams, is_leaf=_is_q)
  total = sum(int(np.prod(x.shape)) for x in leaves)
  quantized = sum(int(np.prod(x.shape)) for x in leaves if _is_q(x))
  q, f = weight_bytes(qparams), fp32_bytes(qparams)
  return {"weight_bytes": q, "fp32_bytes": f, "weight_bytes_ratio": q / f,
          "quantized_fraction": quantized / max(total, 1)}


def _reduced_sharding(sharding, ndim: int, axis: int):
  if not isinstance(sharding, NamedSharding):
    return sharding
  spec = list(sharding.spec) + [None] * (ndim - len(sharding.spec))
  spec[axis] = None
  return NamedSharding(sharding.mesh, PartitionSpec(*spec))


def quantized_shardings(params, shardings, *, embeddings: bool = True,
                        exclude: tuple[str, ...] = ()):
  """Shardings of quantize_params(params): int8 values as the float weight, scales as it with
  the reduced axis whole."""
  def one(path, leaf, sharding):
    axis = quantized_axis(path, leaf, embeddings, exclude)
    if axis is None:
      return sharding
    return QArray(sharding, _reduced_sharding(sharding, len(leaf.shape), axis), axis)
  return jax.tree_util.tree_map_with_path(one, params, shardings)


def quantize_sharded(params, shardings, *, embeddings: bool = True, exclude: tuple[str, ...] = ()):
  """Quantizes params already placed with `shardings` where they are (each device its shard);
  returns (qparams, their shardings) for jax.jit(..., in_shardings=...)."""
  qshardings = quantized_shardings(params, shardings, embeddings=embeddings, exclude=exclude)
  fn = functools.partial(quantize_params, embeddings=embeddings, exclude=exclude)
  return jax.jit(fn, out_shardings=qshardings)(params), qshardings


def describe(r: dict, what: str = "int8 weights") -> str:
  return (f"{what}: {r['weight_bytes'] / 1e6:.1f} MB of {r['fp32_bytes'] / 1e6:.1f} MB fp32 "
          f"({100 * r['weight_bytes_ratio']:.1f}%), {100 * r['quantized_fraction']:.2f}% of "
          "parameters quantized")


def log_report(qparams, what: str = "int8 weights") -> dict:
  r = report(qparams)
  log.info("%s", describe(r, what))
  return r
