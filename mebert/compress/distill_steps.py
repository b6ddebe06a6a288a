"""Knowledge-distillation losses and the pure, jitted distillation train step.

The student (a BertForTask) learns from a fixed teacher (another BertForTask) on the fine-tuning
batches. Every loss is a sum over the (micro-)batch divided by a whole-batch count, as in
mebert.tasks.steps, so padding rows and gradient accumulation leave the update unchanged:

  soft       KL(softmax(t / T) || softmax(s / T)) * T^2 per labelled item (a row, a packed segment or
             a tagged token: the leading shape of the labels), weighted like the labels; the T^2
             keeps its gradient's scale independent of T (Hinton et al. 2015). Regression: (s - t)^2.
  hard       the fine-tuning cross-entropy (squared error for regression) against the labels.
  hidden     squared error between mapped student and teacher layer outputs, averaged over hidden
             units, real tokens and layer pairs; when the widths differ the student's states go
             through a learned linear projection to the teacher's width first (TinyBERT).
  attention  KL(teacher || student) between the attention distributions of mapped layers, per real
             query (and head), over the keys of the query's own segment (the rest have probability
             0 in both); different head counts compare head-averaged maps. Averaged like hidden.

The projection is trained with the student but kept out of `params`, which stay exactly the
student's BertForTask tree (what eval, predict and export read): it rides as the last element of
the optimizer state (ProjectionState), so the checkpoint's optimizer item saves and restores it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mebert.model.attention import ATTENTION_PROBS, segment_mask
from mebert.model.encoder import HIDDEN_STATES
from mebert.tasks import steps as task_steps
from mebert.train import steps as train_steps_lib
from mebert.train.steps import TrainState

LOSSES = ("soft", "hard", "hidden", "attention")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  temperature: float = 1.0
  soft_weight: float = 1.0
  hard_weight: float = 1.0
  hidden_weight: float = 0.0
  attention_weight: float = 0.0
  # (student layer, teacher layer) pairs, 0-based, that the hidden and attention losses compare.
  layer_pairs: tuple[tuple[int, int], ...] = ()

  @property
  def wants_hidden(self) -> bool:
    return self.hidden_weight > 0 and bool(self.layer_pairs)

  @property
  def wants_attention(self) -> bool:
    return self.attention_weight > 0 and bool(self.layer_pairs)

  def collections(self) -> tuple[str, ...]:
    """What the models must sow: only the intermediate outputs some loss reads."""
    return ((HIDDEN_STATES,) if self.wants_hidden else ()) + (
        (ATTENTION_PROBS,) if self.wants_attention else ())


class ProjectionState(NamedTuple):
  """The distillation-only parameters ({} when none), kept after the optimizer's own state."""
  params: Any


class HiddenProjection(nn.Module):
  """Student hidden states [..., Hs] -> the teacher's width [..., Ht] (a linear map with bias)."""

  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  initializer_range: float = 0.02

  @nn.compact
  def __call__(self, x):
    return nn.Dense(
        self.features, dtype=self.dtype, param_dtype=self.param_dtype, name="dense",
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.normal(self.initializer_range), ("embed", "embed_out")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed_out",)))(x)


# --- the losses, on arrays --------------------------------------------------------------------


def soft_kl(student_logits, teacher_logits, temperature: float):
  """KL(teacher || student) of the temperature-softened distributions, times T^2: one value per
  item (every axis but the last, the classes)."""
  log_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
  log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  return temperature ** 2 * jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1)


def hidden_mse(student_BxLxH, teacher_BxLxH):
  """Squared error per token [B, L], averaged over the (teacher-width) hidden units."""
  diff = student_BxLxH.astype(jnp.float32) - teacher_BxLxH.astype(jnp.float32)
  return jnp.mean(diff * diff, axis=-1)


def attention_kl(student_BxNxLxL, teacher_BxNxLxL, mask_Bx1xLxL):
  """KL(teacher || student) of each query's distribution over the keys it may attend to, averaged
  over heads: [B, L] (0 for padding queries, which attend to nothing). Different head counts
  compare head-averaged maps."""
  p_s = student_BxNxLxL.astype(jnp.float32)
  p_t = teacher_BxNxLxL.astype(jnp.float32)
  if p_s.shape[1] != p_t.shape[1]:
    p_s, p_t = p_s.mean(axis=1, keepdims=True), p_t.mean(axis=1, keepdims=True)
  tiny = jnp.finfo(jnp.float32).tiny  # a probability that underflowed: a finite log
  terms = p_t * (jnp.log(jnp.maximum(p_t, tiny)) - jnp.log(jnp.maximum(p_s, tiny)))
  return jnp.mean(jnp.sum(jnp.where(mask_Bx1xLxL, terms, 0.0), axis=-1), axis=1)


def sown_hidden_states(sown: dict) -> tuple:
  """The encoder's sown (embeddings, layer 1 .. layer L outputs) from an apply's mutated vars."""
  found = [v for p, v in _flatten(sown.get(HIDDEN_STATES, {})) if p[-1] == "layers"]
  if len(found) != 1:
    raise ValueError(f"expected one sown {HIDDEN_STATES}/layers entry, found {len(found)}")
  return found[0][0]


def sown_attention(sown: dict) -> list:
  """Per-layer [B, N, L, L] probabilities from an apply's mutated vars (scanned layers unstacked)."""
  maps = {}
  for path, value in _flatten(sown.get(ATTENTION_PROBS, {})):
    layer = next(k for k in path if k == "layer" or k.startswith("layer_"))
    if layer == "layer":  # scanned: one stacked entry
      return list(value[0])
    maps[int(layer[6:])] = value[0]
  return [maps[i] for i in sorted(maps)]


def _flatten(tree, prefix=()):
  if isinstance(tree, dict) or hasattr(tree, "items"):
    for k, v in tree.items():
      yield from _flatten(v, prefix + (str(k),))
  else:
    yield prefix, tree


# --- the step ---------------------------------------------------------------------------------


def _apply(model, params, inputs: dict, collections: tuple[str, ...], **kwargs):
  if not collections:
    return model.apply({"params": params}, **inputs, **kwargs), {}
  return model.apply({"params": params}, **inputs, mutable=list(collections), **kwargs)


def distill_sums(trainable, teacher_params, batch: dict, rng, *, student: nn.Module,
                 teacher: nn.Module, projection: nn.Module | None, kind: str, loss: LossConfig,
                 totals):
  """(objective, sums): this micro-batch's share of the whole batch's weighted distillation loss,
  and the metric sums (the fine-tuning step's, plus soft/hidden/attention sums)."""
  inputs = task_steps.model_inputs(batch)
  collections = loss.collections()
  s_logits, s_sown = _apply(student, trainable["student"], inputs, collections,
                            rngs={"dropout": rng})
  t_logits, t_sown = _apply(teacher, teacher_params, inputs, collections)
  t_logits, t_sown = jax.lax.stop_gradient((t_logits, t_sown))
  w = task_steps._weights(batch, kind)  # the fine-tuning step's label weights: same counting
  labels = batch["labels"]
  if kind == "regression":
    hard = (s_logits[..., 0] - labels.astype(jnp.float32)) ** 2
    soft = (s_logits[..., 0] - t_logits[..., 0]) ** 2
    correct = jnp.zeros_like(hard)
  else:
    log_probs = jax.nn.log_softmax(s_logits, axis=-1)
    hard = -jnp.take_along_axis(log_probs, jnp.maximum(labels, 0)[..., None], axis=-1)[..., 0]
    soft = soft_kl(s_logits, t_logits, loss.temperature)
    correct = (jnp.argmax(s_logits, -1) == labels).astype(jnp.float32)
  real = batch["segment_ids"] != 0
  hidden_sum = attention_sum = jnp.zeros((), jnp.float32)
  if loss.wants_hidden:
    s_states, t_states = sown_hidden_states(s_sown), sown_hidden_states(t_sown)
    for j, t in loss.layer_pairs:  # hidden_states[0] is the embeddings: layer i is at i + 1
      s = s_states[j + 1] if projection is None else projection.apply(
          {"params": trainable["projection"]}, s_states[j + 1])
      hidden_sum += jnp.sum(hidden_mse(s, t_states[t + 1]) * real)
  if loss.wants_attention:
    s_maps, t_maps = sown_attention(s_sown), sown_attention(t_sown)
    mask = segment_mask(batch["segment_ids"])
    for j, t in loss.layer_pairs:
      attention_sum += jnp.sum(attention_kl(s_maps[j], t_maps[t], mask))
  sums = {"loss_sum": jnp.sum(hard * w), "correct": jnp.sum(correct * w), "count": jnp.sum(w),
          "examples": jnp.sum(batch["weights"]),
          "tokens": jnp.asarray(batch["input_ids"].size, jnp.float32),
          "real_tokens": jnp.sum(real.astype(jnp.float32)),
          "soft_sum": jnp.sum(soft * w), "hidden_sum": hidden_sum, "attention_sum": attention_sum}
  return objective(sums, loss, totals)["distill_loss"], sums


def objective(sums: dict, loss: LossConfig, totals) -> dict:
  """Each loss as a whole-batch mean (totals: label weight, real tokens), and their weighted sum."""
  labels_total, tokens_total = totals
  per_layer_tokens = jnp.maximum(tokens_total * max(len(loss.layer_pairs), 1), 1.0)
  parts = {"distill_soft": sums["soft_sum"] / jnp.maximum(labels_total, 1.0),
           "distill_hard": sums["loss_sum"] / jnp.maximum(labels_total, 1.0),
           "distill_hidden": sums["hidden_sum"] / per_layer_tokens,
           "distill_attention": sums["attention_sum"] / per_layer_tokens}
  weights = (loss.soft_weight, loss.hard_weight, loss.hidden_weight, loss.attention_weight)
  parts["distill_loss"] = sum(wt * parts[f"distill_{name}"] for wt, name in zip(weights, LOSSES)
                              if wt)
  return parts


def train_step(state: TrainState, teacher_params, batch: dict, seed: jax.Array, *,
               student: nn.Module, teacher: nn.Module, projection: nn.Module | None,
               tx: optax.GradientTransformation, schedule: Callable, kind: str, loss: LossConfig,
               grad_accum_steps: int = 1) -> tuple[TrainState, dict]:
  """One update of the student (and projection) on a global batch. The teacher's params are an
  argument, not a constant of the program: a compile does not embed (or copy) them."""
  rng = jax.random.fold_in(jax.random.key(seed, impl="rbg"), state.step)
  totals = (jnp.sum(task_steps._weights(batch, kind)),
            jnp.sum((batch["segment_ids"] != 0).astype(jnp.float32)))
  trainable = {"student": state.params, "projection": state.opt_state[-1].params}
  grad_fn = jax.grad(functools.partial(distill_sums, student=student, teacher=teacher,
                                       projection=projection, kind=kind, loss=loss, totals=totals),
                     has_aux=True)
  grads, sums = train_steps_lib.accumulated_grads(
      lambda b, r: grad_fn(trainable, teacher_params, b, r), batch, rng, grad_accum_steps)
  parts = objective(sums, loss, totals)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(parts["distill_loss"]) & jnp.isfinite(grad_norm)
  inner = state.replace(params=trainable, opt_state=state.opt_state[:-1])
  updated = train_steps_lib.guarded_update(inner, grads, tx, finite, grad_norm)
  new_state = updated.replace(
      params=updated.params["student"],
      opt_state=tuple(updated.opt_state) + (ProjectionState(updated.params["projection"]),))
  metrics = dict(sums, **parts, loss=parts["distill_hard"], grad_norm=grad_norm,
                 learning_rate=train_steps_lib.applied_learning_rate(schedule, state),
                 nonfinite_in_row=new_state.nonfinite_in_row,
                 steps=jnp.ones((), jnp.float32))
  return new_state, metrics


# --- jitting ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CompiledDistill:
  abstract_state: Any  # ShapeDtypeStructs with shardings: the restore target
  replicated: Any
  init: Callable  # rng key -> TrainState (student params; projection in opt_state[-1])
  step: Callable  # (state, teacher_params, batch, seed) -> (state, metric sums)
  teacher_shardings: Any


@functools.lru_cache(maxsize=4)
def compiled_steps(student_train: nn.Module, student_eval: nn.Module, teacher: nn.Module,
                   projection: nn.Module | None, kind: str, optimizer_key: str, num_layers: int,
                   loss: LossConfig, accum: int, mesh, rules) -> CompiledDistill:
  """The jitted init and step with explicit shardings from the mesh, the state donated; cached,
  so a resumed run (or a second one of the same shapes) in one process compiles nothing new."""
  from jax.sharding import NamedSharding, PartitionSpec
  from ml_collections import config_dict

  from mebert.parallel import mesh as mesh_lib
  from mebert.tasks import optim

  resolved = config_dict.ConfigDict(json.loads(optimizer_key))
  tx = optim.make_optimizer(resolved, num_layers)
  schedule = optim.base_optimizer.learning_rate_schedule(resolved.train)
  ids = jnp.zeros((1, 8), jnp.int32)

  def init_state(rng):
    student_rng, projection_rng = jax.random.split(rng)
    params = student_eval.init(student_rng, ids, ids, jnp.ones_like(ids))["params"]
    extra = {}
    if projection is not None:
      width = student_eval.config.hidden_size
      extra = projection.init(projection_rng, jnp.zeros((1, 1, width), jnp.float32))["params"]
    zero = lambda: jnp.zeros((), jnp.int32)  # distinct buffers: the state is donated as a whole
    opt_state = tx.init({"student": params, "projection": extra})
    return TrainState(step=zero(), params=params,
                      opt_state=tuple(opt_state) + (ProjectionState(extra),),
                      nonfinite_in_row=zero(), nonfinite_total=zero())

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init_state, jax.random.key(0, impl="rbg"))
    shardings, abstract = mesh_lib.sharded_abstract(boxed, mesh, rules)
    teacher_boxed = jax.eval_shape(lambda: teacher.init(jax.random.key(0), ids, ids,
                                                        jnp.ones_like(ids))["params"])
    teacher_shardings = mesh_lib.logical_shardings(teacher_boxed, mesh, rules)
  replicated = NamedSharding(mesh, PartitionSpec())
  step_fn = functools.partial(train_step, student=student_train, teacher=teacher,
                              projection=projection, tx=tx, schedule=schedule, kind=kind,
                              loss=loss, grad_accum_steps=accum)
  step = jax.jit(step_fn, donate_argnums=0, out_shardings=(shardings, None),
                 in_shardings=(shardings, teacher_shardings, mesh_lib.batch_sharding(mesh),
                               replicated))
  init = jax.jit(lambda rng: nn.unbox(init_state(rng)), out_shardings=shardings)
  return CompiledDistill(abstract, replicated, init, step, teacher_shardings)
