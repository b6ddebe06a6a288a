"""Starting a run from existing weights: a mebert workdir (`init.checkpoint`) or a Hugging Face
folder (`init.hf`). Only used when the workdir has no checkpoint of its own to resume."""

from __future__ import annotations

import logging

import jax
import numpy as np

from mebert.train import checkpoints

log = logging.getLogger(__name__)


def merge_params(target, source, *, origin: str):
  """Copies every source leaf whose path exists in target (shapes must agree) onto target's
  shardings; returns (params, missing paths kept from target's initialisation)."""
  flat_source = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(source)[0]}
  missing, used = [], set()

  def take(path, leaf):
    key = jax.tree_util.keystr(path)
    if key not in flat_source:
      missing.append(key)
      return leaf
    value = np.asarray(flat_source[key])
    if value.shape != leaf.shape:
      raise ValueError(f"{origin}: parameter {key} has shape {value.shape} but the model "
                       f"config expects {leaf.shape}")
    used.add(key)
    return jax.device_put(value.astype(leaf.dtype), leaf.sharding)

  params = jax.tree_util.tree_map_with_path(take, target)
  unused = sorted(set(flat_source) - used)
  if unused:
    log.warning("%s: %d parameters not used by this model, e.g. %s", origin, len(unused), unused[:3])
  if missing:
    log.warning("%s: %d parameters not in the source, kept from initialisation, e.g. %s", origin,
                len(missing), missing[:3])
  return params, missing


def maybe_initialize(state, config, experiment):
  if config.init.checkpoint:
    source, _ = checkpoints.restore_params(config.init.checkpoint)
    params, _ = merge_params(state.params, source, origin=f"init.checkpoint={config.init.checkpoint}")
    return state.replace(params=params)
  return state
