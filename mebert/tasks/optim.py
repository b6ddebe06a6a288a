"""The fine-tuning optimizer: mebert's AdamW recipe (mebert.train.optimizer: clipping, decoupled
weight decay off LayerNorm and biases, warmup + linear decay) with two optional scales on top.

Layer-wise rate decay (ELECTRA, Clark et al. 2020): every update of a parameter at depth d is scaled
by decay^(L + 1 - d), embeddings at d = 0, layer i at i + 1, pooler and classifier at L + 1 (unscaled).
AdamW's update already includes the weight-decay term, so the scale acts as a per-layer learning
rate. Scanned layers get a vector of scales along their leading layer axis.

Reduce-on-plateau uses optax.contrib.reduce_on_plateau's state and decision rule, but its counters
advance on the dev metric at each evaluation (`step_plateau`), not on noisy per-batch losses; the
train step only multiplies updates by the current scale.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import ReduceLROnPlateauState

from mebert.train import optimizer as base_optimizer


def _depth(path, num_layers: int):
  names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
  if "embeddings" in names or "embeddings_project" in names:  # ELECTRA's projection: embeddings
    return 0
  for n in names:
    if n.startswith("layer_") and n[6:].isdigit():
      return int(n[6:]) + 1
  if "encoder" in names and "layer" in names:  # scanned: one scale per stacked layer
    return np.arange(1, num_layers + 1)
  if "final_LayerNorm" in names:
    return num_layers
  return num_layers + 1


def scale_by_layer(decay: float, num_layers: int) -> optax.GradientTransformation:
  def scales(tree):
    def one(path, leaf):
      depth = _depth(path, num_layers)
      s = np.power(decay, num_layers + 1 - np.asarray(depth, np.float64)).astype(np.float32)
      return s.reshape(s.shape + (1,) * (leaf.ndim - s.ndim)) if s.ndim else float(s)
    return jax.tree_util.tree_map_with_path(one, tree)

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales(updates)), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _plateau(cfg) -> optax.GradientTransformationExtraArgs:
  return optax.contrib.reduce_on_plateau(
      factor=float(cfg.factor), patience=int(cfg.patience), cooldown=int(cfg.cooldown),
      min_scale=float(cfg.min_scale), accumulation_size=1)


def scale_by_plateau(cfg) -> optax.GradientTransformation:
  init = _plateau(cfg).init

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: u * state.scale.astype(u.dtype), updates), state

  return optax.GradientTransformation(init, update)


def make_optimizer(config, num_layers: int) -> optax.GradientTransformation:
  """config: the whole fine-tuning config, with train.num_steps/warmup_steps resolved."""
  parts = [base_optimizer.make_optimizer(config.train)]
  decay = float(config.train.layer_decay)
  if not 0.0 < decay <= 1.0:
    raise ValueError(f"train.layer_decay={decay} must be in (0, 1]")
  if decay < 1.0:
    parts.append(scale_by_layer(decay, num_layers))
  if config.reduce_on_plateau.enabled:
    parts.append(scale_by_plateau(config.reduce_on_plateau))
  return optax.chain(*parts)


def step_plateau(opt_state, plateau_cfg, value: float):
  """Feeds a dev value (lower is better) to the plateau state; returns (opt_state, scale)."""
  for i, part in enumerate(opt_state):
    if isinstance(part, ReduceLROnPlateauState):
      _, new = _plateau(plateau_cfg).update({}, part, value=jnp.asarray(value, jnp.float32))
      # Keep each leaf where it was: the jitted step takes the state with fixed shardings.
      new = jax.tree.map(lambda n, o: jax.device_put(n, o.sharding), new, part)
      return opt_state[:i] + (new,) + opt_state[i + 1:], float(new.scale)
  return opt_state, 1.0
