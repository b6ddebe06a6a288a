"""Optax optimizer and learning-rate schedule from `config.train`.

BERT's recipe: AdamW (beta2 0.999, eps 1e-6, weight decay 0.01 except LayerNorm and biases),
global-norm clipping at 1.0, linear warmup then linear decay. LAMB (You et al. 2019) for the large
batches of pod-scale pretraining, with LayerNorm and biases outside both its weight decay and its
trust ratio. StableAdamW (Wortsman et al. 2023; ModernBERT's optimizer): AdamW whose step for each
parameter tensor is divided by max(1, RMS(g^2 / v)), so a tensor whose gradient jumps past its
second-moment estimate takes a smaller step instead of a spike. Schedules: linear, cosine or
polynomial decay after the warmup, over `train.schedule_steps` (a run that is one phase of a longer
one) or `train.num_steps`.

The optimizer state is a tuple, stable across versions so checkpoints restore:
  (clipping: EmptyState,                                  # absent when clip_grad_norm = 0
   (ScaleByAdamState(count, mu, nu), MaskedState(EmptyState),  # Adam; weight decay (masked)
    <AdamW: ScaleByScheduleState(count) | LAMB: MaskedState(EmptyState) (trust ratio),
     ScaleByScheduleState(count)>))
  StableAdamW: (clipping, (ScaleByAdamState(count, mu, nu), ScaleByScheduleState(count))).
Only ScaleByAdamState and ScaleByScheduleState hold arrays; `schedule_count` reads the latter.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import optax

log = logging.getLogger(__name__)

SCHEDULES = ("linear", "cosine", "polynomial", "constant")
OPTIMIZERS = ("adamw", "lamb", "stable_adamw")


def schedule_length(train_config) -> int:
  """The steps the schedule spans: train.schedule_steps when set (this run is the first part of a
  longer one, e.g. BERT's phase 1 of one schedule over both phases), else train.num_steps."""
  steps = int(train_config.num_steps)
  length = int(train_config.get("schedule_steps", 0) or 0)
  if length == 0:
    return steps
  if length < steps:
    raise ValueError(f"train.schedule_steps={length} must be 0 (= train.num_steps) or at least "
                     f"train.num_steps={steps}")
  return length


_warned: set = set()


def warmup_steps(train_config, num_steps: int | None = None) -> int:
  """The warmup of a schedule of `num_steps` (default: schedule_length): train.warmup_steps, or
  when it is negative train.warmup_ratio of the schedule. A warmup longer than the schedule is cut
  to it, with a warning (a short smoke run of a long recipe, e.g. --config.train.num_steps=3)."""
  total = schedule_length(train_config) if num_steps is None else int(num_steps)
  warmup = int(train_config.warmup_steps)
  if warmup < 0:
    ratio = float(train_config.get("warmup_ratio", -1.0))
    if not 0.0 <= ratio <= 1.0:
      raise ValueError(f"train.warmup_steps={warmup} asks for train.warmup_ratio of the run, but "
                       f"train.warmup_ratio={ratio} is not in [0, 1]")
    return int(round(ratio * total))
  if warmup > total:
    if (warmup, total) not in _warned:
      _warned.add((warmup, total))
      log.warning("train.warmup_steps=%d is longer than the schedule (%d steps: train.num_steps or "
                  "train.schedule_steps): warming up over all %d", warmup, total, total)
    return total
  return warmup


def learning_rate_schedule(train_config) -> optax.Schedule:
  peak = float(train_config.learning_rate)
  total = schedule_length(train_config)
  if total <= 0:
    raise ValueError(f"train.num_steps={total} must be > 0")
  warmup = warmup_steps(train_config)
  end = peak * float(train_config.get("end_learning_rate_ratio", 0.0))
  decay_steps = max(total - warmup, 1)
  kind = train_config.get("schedule", "linear")
  if kind == "linear":
    decay = optax.linear_schedule(peak, end, decay_steps)
  elif kind == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak if peak else 0.0)
  elif kind == "polynomial":
    decay = optax.polynomial_schedule(peak, end, float(train_config.get("decay_power", 1.0)),
                                      decay_steps)
  elif kind == "constant":
    decay = optax.constant_schedule(peak)
  else:
    raise ValueError(f"train.schedule={kind!r} is not one of {SCHEDULES}")
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params):
  """True where weight decay applies: not on LayerNorm parameters, biases or 1-d vectors."""

  def wants_decay(path, leaf):
    names = [getattr(k, "key", getattr(k, "name", str(k))) for k in path]
    return not (any("LayerNorm" in str(n) for n in names) or names[-1] == "bias")

  return jax.tree_util.tree_map_with_path(wants_decay, params)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
  """optax.clip_by_global_norm (the same empty state, so checkpoints do not change), scaling every
  element by one multiplier per step instead of dividing it by the norm: XLA then fuses the scaling
  into both Adam moment updates rather than writing the clipped gradient out first, a pass over
  every parameter (XLA:CPU does not duplicate a division into two consumers).

  The train steps compute the gradient norm anyway (a metric, and the non-finite guard) and pass it
  as the extra argument `global_grad_norm`; the update inside the guard's cond cannot share it with
  the step otherwise, and summing the squares of every gradient again is a pass over all of them
  (about 1% of a BERT-base step on CPU)."""

  def update(updates, state, params=None, *, global_grad_norm=None, **extra_args):
    del params, extra_args
    norm = optax.global_norm(updates) if global_grad_norm is None else global_grad_norm
    scale = jnp.where(norm < max_norm, 1.0, max_norm / norm)
    return jax.tree.map(lambda u: u * scale.astype(u.dtype), updates), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def lamb(learning_rate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
         weight_decay: float = 0.0, mask=decay_mask) -> optax.GradientTransformation:
  """LAMB (You et al. 2019) with the parameters in `mask`'s False leaves (LayerNorm, biases)
  excluded from both the weight decay and the layer-wise trust ratio: their update is Adam's
  direction times the learning rate. optax.lamb masks only the decay; the trust ratio of a bias
  (often zero, hence ratio 1) or a LayerNorm scale (norm sqrt(H)) is not what the recipe uses:
  google-research/bert's and NVIDIA's LAMB (and tensorflow_addons' `exclude_from_layer_adaptation`,
  which defaults to the decay exclusions) skip both for ["LayerNorm", "layer_norm", "bias"].

  The same transformations as optax.lamb in the same order, so the state tree (and so a checkpoint)
  is the same as optax.lamb(mask=...)'s apart from the trust ratio's empty MaskedState."""
  return optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      optax.add_decayed_weights(weight_decay, mask),
      optax.masked(optax.scale_by_trust_ratio(), mask),
      optax.scale_by_learning_rate(learning_rate))


def scale_by_stable_adam(b1: float = 0.9, b2: float = 0.98, eps: float = 1e-6,
                         weight_decay: float = 0.0, mask=decay_mask) -> optax.GradientTransformation:
  """StableAdamW's direction before the learning rate: per tensor, (Adam's bias-corrected
  direction + weight_decay x param where `mask` says) / max(1, RMS(g^2 / max(v, eps^2))), with v
  the bias-corrected second moment after this step's gradient. The division applies to the decay
  too, as in Wortsman et al. 2023 (Algorithm 2: the clipped rate multiplies both) and optimi's
  StableAdamW that ModernBERT trained with. The state is optax's ScaleByAdamState.

  Written here because optax has no StableAdamW, and the clip needs the raw gradient beside the
  second moment, which optax.scale_by_adam does not pass on."""
  def init(params):
    return optax.scale_by_adam(b1=b1, b2=b2, eps=eps).init(params)

  def update(updates, state, params=None):
    if weight_decay and params is None:
      raise ValueError("stable_adamw with weight decay needs the params in update()")
    mu = optax.tree_utils.tree_update_moment(updates, state.mu, b1, 1)
    nu = optax.tree_utils.tree_update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count = optax.safe_increment(state.count)
    mu_hat = optax.tree_utils.tree_bias_correction(mu, b1, count)
    nu_hat = optax.tree_utils.tree_bias_correction(nu, b2, count)
    decays = mask(params) if callable(mask) and params is not None else mask
    if decays is None or not weight_decay:
      decays = jax.tree.map(lambda _: False, updates)
      params = updates if params is None else params

    def leaf(g, m, v, p, decay):
      ratio = jnp.square(g.astype(jnp.float32)) / jnp.maximum(v, eps * eps)
      scale = 1.0 / jnp.maximum(1.0, jnp.sqrt(jnp.mean(ratio)))
      step = m / (jnp.sqrt(v) + eps)
      if decay:
        step = step + weight_decay * p
      return (scale * step).astype(g.dtype)

    out = jax.tree.map(leaf, updates, mu_hat, nu_hat, params, decays)
    return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init, update)


def stable_adamw(learning_rate, b1: float = 0.9, b2: float = 0.98, eps: float = 1e-6,
                 weight_decay: float = 0.0, mask=decay_mask) -> optax.GradientTransformation:
  """StableAdamW: `scale_by_stable_adam` then the (scheduled) learning rate."""
  return optax.chain(scale_by_stable_adam(b1, b2, eps, weight_decay, mask),
                     optax.scale_by_learning_rate(learning_rate))


def schedule_count(opt_state, default=None):
  """The step at which the optimizer evaluates its learning-rate schedule in its next update:
  optax's ScaleByScheduleState.count. A skipped (non-finite) step leaves the optimizer state, and
  so this count, as it was, while TrainState.step counts every step; `default` where the state
  holds no schedule."""
  found = optax.tree_utils.tree_get_all_with_path(opt_state, "ScaleByScheduleState")
  return found[0][1].count if found else default


def make_optimizer(train_config) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(train_config)
  kind = train_config.get("optimizer", "adamw")
  common = dict(b1=float(train_config.b1), b2=float(train_config.b2), eps=float(train_config.eps),
                weight_decay=float(train_config.weight_decay), mask=decay_mask)
  if kind == "adamw":
    opt = optax.adamw(schedule, **common)
  elif kind == "lamb":
    opt = lamb(schedule, **common)
  elif kind == "stable_adamw":
    opt = stable_adamw(schedule, **common)
  else:
    raise ValueError(f"train.optimizer={kind!r} is not one of {OPTIMIZERS}")
  clip = float(train_config.get("clip_grad_norm", 1.0))
  return optax.chain(clip_by_global_norm(clip), opt) if clip > 0 else opt
