"""The two layouts of the encoder's layers in a params tree, and the conversion between them.

Unrolled: bert/encoder/layer_<i>/... per layer (scan_layers=False, and Hugging Face's order).
Stacked: one bert/encoder/layer/... whose leaves have a leading [num_layers] axis (scan_layers).
Everything that reads weights written by another run (fine-tuning from a checkpoint, eval and
predict, distillation, export, embeddings) brings them to the layout its model wants with these.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import traverse_util


def is_stacked(params: dict) -> bool:
  """True for a scan_layers tree (bert/encoder/layer with a leading [num_layers] axis)."""
  encoder = (params.get("bert") or {}).get("encoder") if isinstance(params, dict) else None
  return isinstance(encoder, dict) and "layer" in encoder


def stack_layers(params: dict, num_layers: int) -> dict:
  """Unrolled layer_<i> subtrees -> one `layer` subtree whose leaves gain a leading layer axis."""
  encoder = params["bert"]["encoder"]
  flat = [traverse_util.flatten_dict(encoder[f"layer_{i}"]) for i in range(num_layers)]
  stacked = traverse_util.unflatten_dict(
      {k: np.stack([np.asarray(f[k]) for f in flat]) for k in flat[0]})
  rest = {k: v for k, v in encoder.items() if not k.startswith("layer_")}
  return {**params, "bert": {**params["bert"], "encoder": {**rest, "layer": stacked}}}


def unstack_layers(params: dict) -> dict:
  """The inverse of stack_layers: one `layer` subtree -> layer_<i> subtrees."""
  encoder = params["bert"]["encoder"]
  flat = traverse_util.flatten_dict(encoder["layer"])
  num_layers = next(iter(flat.values())).shape[0]
  layers = {f"layer_{i}": traverse_util.unflatten_dict({k: np.asarray(v)[i]
                                                         for k, v in flat.items()})
            for i in range(num_layers)}
  rest = {k: v for k, v in encoder.items() if k != "layer"}
  return {**params, "bert": {**params["bert"], "encoder": {**rest, **layers}}}


def normalize_params(params) -> dict:
  """Host numpy arrays in the unrolled layout, whatever the checkpoint held (a {"params": ...}
  wrapper, jax arrays, scanned layers)."""
  if isinstance(params, dict) and set(params) == {"params"}:
    params = params["params"]
  params = jax.tree.map(np.asarray, dict(params))
  params = {k: dict(v) if isinstance(v, dict) else v for k, v in params.items()}
  if "bert" not in params:
    raise ValueError(f"params have no 'bert' subtree (top-level keys: {sorted(params)})")
  return unstack_layers(params) if is_stacked(params) else params
