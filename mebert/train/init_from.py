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


# ModelConfig keys a run may choose freely when its weights come from elsewhere.
RUNTIME_KEYS = ("dtype", "param_dtype", "remat_policy", "attention_backend", "dropout_rate",
                "attention_dropout_rate")


class HfSource:
  """A Hugging Face folder as the starting point of a pretraining run: its architecture, its
  tokenizer and its weights (heads it lacks are initialised and reported)."""

  def __init__(self, config):
    from mebert.data.tokenizer import load_tokenizer
    from mebert.interop.hf import load_hf_bert

    folder = config.init.hf
    if config.init.checkpoint:
      raise ValueError("set one of init.hf and init.checkpoint, not both")
    self.model_config, self.params, report = load_hf_bert(
        folder, scan_layers=bool(config.model.scan_layers),
        parity=bool(config.init.get("hf_parity", False)), seed=int(config.seed),
        **{k: config.model[k] for k in RUNTIME_KEYS})
    log.info("init.hf=%s: %s", folder, report.summary())
    vocab = config.data.vocab or report.tokenizer
    if not vocab:
      raise ValueError(f"init.hf={folder} has no vocab.txt or tokenizer.json; set data.vocab")
    self.tokenizer = load_tokenizer(vocab, lowercase=bool(config.data.lowercase))


def maybe_initialize(state, config, experiment):
  hf = getattr(experiment, "hf_source", None)
  if hf is not None:
    params, _ = merge_params(state.params, hf.params, origin=f"init.hf={config.init.hf}")
    return state.replace(params=params)
  if config.init.checkpoint:
    source, _ = checkpoints.restore_params(config.init.checkpoint)
    params, _ = merge_params(state.params, source, origin=f"init.checkpoint={config.init.checkpoint}")
    return state.replace(params=params)
  return state
