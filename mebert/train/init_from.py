"""Starting a run from existing weights: a mebert workdir (`init.checkpoint`), a Hugging Face
folder (`init.hf`), or another run's whole train state (`init.continue_from`). Only used when the
workdir has no checkpoint of its own to resume.

`init.continue_from=WORKDIR` is the next phase of one run: BERT's phase 2 at 512 tokens continues
phase 1's parameters, optimizer moments and step count (so one learning-rate schedule spans both
phases) on a fresh data stream at the new length, in a workdir of its own. With
`init.restart_schedule=True` the step and the optimizer's counts start again at 0 (the moments
are kept): NVIDIA's LAMB recipe, whose phase 2 has a schedule of its own.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from mebert.train import checkpoints, optimizer

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
  """The fresh `state` of a new run, replaced by what `config.init` names (if anything)."""
  if config.init.get("continue_from", "") is None:
    raise ValueError("init.continue_from is required by this config: the workdir of the run (the "
                     "previous phase) to continue")
  if config.init.get("continue_from", ""):
    return continue_from(config, experiment)
  hf = getattr(experiment, "hf_source", None)
  if hf is not None:
    params, _ = merge_params(state.params, hf.params, origin=f"init.hf={config.init.hf}")
    return state.replace(params=params)
  if config.init.checkpoint:
    source, _ = checkpoints.restore_params(config.init.checkpoint)
    params, _ = merge_params(state.params, source, origin=f"init.checkpoint={config.init.checkpoint}")
    return state.replace(params=params)
  return state


def continue_from(config, experiment):
  """The train state (params, optimizer state, step, non-finite counters) of the latest readable
  checkpoint in `init.continue_from`, on this run's shardings; after checks that this run can
  continue it: the same architecture and optimizer, a tokenizer with the same file, steps left."""
  source = str(config.init.continue_from)
  origin = f"init.continue_from={source}"
  if config.init.hf or config.init.checkpoint:
    raise ValueError(f"{origin}: set one of init.continue_from, init.hf and init.checkpoint")
  saved = checkpoints.saved_config(source)
  if saved is None:
    raise checkpoints.CheckpointError(f"{origin}: no readable checkpoint config in "
                                      f"{checkpoints.checkpoint_dir(source)}")
  _check_continuable(config, saved, origin)
  _check_same_tokenizer(config, experiment.workdir, saved, source, origin)
  step, state = checkpoints.restore_train_state(source, experiment.abstract_state)
  num_steps = int(config.train.num_steps)
  restart = bool(config.init.get("restart_schedule", False))
  if restart:
    state = _restarted(state)
    log.info("%s: continuing its step-%d parameters and optimizer moments with a schedule of "
             "this run's own, from step 0", origin, step)
    return state
  if step >= num_steps:
    raise ValueError(f"{origin} ends at step {step}, and train.num_steps={num_steps} leaves "
                     "nothing to train: set train.num_steps to the whole run's length")
  previous = float(optimizer.learning_rate_schedule(_config_dict(saved["train"]))(step))
  here = float(optimizer.learning_rate_schedule(config.train)(step))
  if not np.isclose(previous, here, rtol=1e-6, atol=1e-12):
    log.warning("%s: the learning rate jumps at step %d from %.3g (its schedule) to %.3g (this "
                "run's); for one schedule over both runs give them the same learning_rate, "
                "warmup_steps and schedule, and the earlier run schedule_steps = this run's "
                "num_steps", origin, step, previous, here)
  log.info("%s: continuing from step %d (learning rate %.3g)", origin, step, here)
  return state


# Keys of config.train that change the optimizer state's structure (a restore would not fit).
_OPTIMIZER_STRUCTURE_KEYS = ("optimizer",)


def _check_continuable(config, saved: dict, origin: str) -> None:
  model = saved.get("model") or {}
  changed = [f"model.{k}={config.model[k]!r} ({model[k]!r} there)" for k in model
             if k in config.model and k not in RUNTIME_KEYS and model[k] != config.model[k]]
  train = saved.get("train") or {}
  changed += [f"train.{k}={config.train[k]!r} ({train[k]!r} there)"
              for k in _OPTIMIZER_STRUCTURE_KEYS
              if k in train and k in config.train and train[k] != config.train[k]]
  if changed:
    raise ValueError(f"{origin} trained another model or optimizer: {', '.join(changed)}; a "
                     "continued run keeps both (init.checkpoint=... takes only the weights)")


def _tokenizer_file(data: dict, workdir: str) -> str:
  """data.vocab, or the sentencepiece model mebert.data.tokenizer.ensure_tokenizer trains."""
  return str(data.get("vocab") or os.path.join(workdir, "vocab", "spm.model"))


def _check_same_tokenizer(config, workdir: str, saved: dict, source: str, origin: str) -> None:
  """Token ids must mean what they meant: the tokenizer file this run uses must be the one the
  continued run used (e.g. a vocabulary trained anew in this workdir need not be)."""
  from etils import epath

  here = epath.Path(_tokenizer_file(config.data, workdir))
  there = epath.Path(_tokenizer_file(saved.get("data") or {}, source))
  if str(here) == str(there) or not there.exists():
    return
  if not here.exists() or here.read_bytes() != there.read_bytes():
    raise ValueError(f"{origin}: this run's tokenizer {here} is not the one it trained with "
                     f"({there}); set data.vocab={there}")


def _restarted(state):
  """Step and every optimizer count back to 0 (new buffers with the same shardings: the state is
  donated as a whole); the Adam moments stay."""

  def reset(path, leaf):
    if getattr(path[-1], "name", None) == "count":
      return jax.device_put(jnp.zeros_like(leaf), leaf.sharding)
    return leaf

  zero = lambda x: jax.device_put(jnp.zeros_like(x), x.sharding)
  return state.replace(step=zero(state.step),
                       opt_state=jax.tree_util.tree_map_with_path(reset, state.opt_state),
                       nonfinite_in_row=zero(state.nonfinite_in_row),
                       nonfinite_total=zero(state.nonfinite_total))


def _config_dict(values: dict):
  from ml_collections import config_dict

  return config_dict.ConfigDict(values)
