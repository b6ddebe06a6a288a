"""Task distillation: train a smaller student from a fine-tuned teacher, in a fine-tuning workdir.

  python -m mebert.train --config=configs/distill/sst2_minilm_3layer.py:TEACHER --workdir=W
  python -m mebert.train --config=... --workdir=W --mode=eval|predict [--quantize=int8]
  python -m mebert.interop export-hf --from=W --to=HF_DIR

The teacher (`distill.teacher`) is a fine-tuning workdir (its best checkpoint, or WORKDIR@STEP) or
a Hugging Face folder with a classifier. The student is either the teacher cut down to some of its
layers (`distill.student_layers`: embeddings, those layers, pooler and classifier copied), or
`config.model` with random weights (e.g. narrower; it reads the teacher's tokenizer). Losses and
their weights: mebert.compress.distill_steps.

The run is a fine-tuning run of the student (data, buckets, eval every N steps, early stopping on
the student's dev metric, keep-best checkpoints) through the one loop (mebert.train.loop: exact
resume, SIGTERM save, non-finite stop, progress bar), with the distillation step in place of the
fine-tuning one. The workdir is a fine-tuning workdir of the student: checkpoints hold its
params and resolved config (model, labels, vocab; plus this `distill` section), so eval, predict,
--quantize=int8 and export-hf read it as any other. Distillation runs unrolled layers (the losses
read every layer's output), so `model.scan_layers` is ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import numpy as np
from ml_collections import config_dict

from mebert.compress import distill_steps
from mebert.model.config import ModelConfig
from mebert.tasks import finetune, inference, sources, steps
from mebert.tasks.defaults import TASK_KINDS
from mebert.train import init_from

log = logging.getLogger(__name__)

# config.model keys that set the numerics of both models (the student's architecture comes from
# the teacher when layers are copied).
_RUNTIME_KEYS = ("dtype", "param_dtype", "attention_backend")


def distill_defaults(c: config_dict.ConfigDict, teacher: str = "") -> config_dict.ConfigDict:
  """Adds the `distill` section (every key, its default and why) to a fine-tuning config."""
  d = c.distill = config_dict.ConfigDict()
  d.teacher = teacher  # a fine-tuning workdir (best checkpoint; WORKDIR@STEP for another) or HF folder
  # Teacher layers the student starts from (with the embeddings, pooler and classifier); () = a
  # random student shaped by config.model.
  d.student_layers = ()
  # The teacher layer each student layer learns from (hidden and attention losses), 0-based;
  # () = uniform: student layer j <- teacher layer (j+1)*T/S - 1, so the top layers meet.
  d.layer_map = ()
  d.temperature = 1.0  # soft targets softmax(logits / T); the soft loss is scaled by T^2
  d.soft_weight = 1.0  # KL to the teacher's softened predictions
  d.hard_weight = 1.0  # cross-entropy on the labels
  d.hidden_weight = 0.0  # MSE of mapped layer outputs (projected when the widths differ)
  d.attention_weight = 0.0  # KL of mapped layers' attention maps
  return c


@dataclasses.dataclass(frozen=True)
class DistillSpec:
  """config.distill, checked: every bad value fails here, naming its key, before any write."""

  teacher: str
  teacher_step: int | None
  student_layers: tuple[int, ...]
  layer_map: tuple[int, ...]
  loss: distill_steps.LossConfig

  @classmethod
  def from_config(cls, config) -> "DistillSpec":
    d = config.distill
    path, at, step = str(d.teacher).rpartition("@") if "@" in str(d.teacher) else (d.teacher, "", "")
    path = path if at else str(d.teacher)
    if not path:
      raise ValueError("distill.teacher is empty: set it to a fine-tuning workdir or a Hugging "
                       "Face folder (e.g. --config.distill.teacher=runs/sst2)")
    if not os.path.isdir(path):
      raise ValueError(f"distill.teacher={path}: no such directory")
    if at and not step.isdigit():
      raise ValueError(f"distill.teacher={d.teacher}: the step after @ must be an integer")
    for key in ("soft_weight", "hard_weight", "hidden_weight", "attention_weight"):
      if float(d[key]) < 0:
        raise ValueError(f"distill.{key}={d[key]} must be >= 0")
    if float(d.temperature) <= 0:
      raise ValueError(f"distill.temperature={d.temperature} must be > 0")
    loss = distill_steps.LossConfig(float(d.temperature), float(d.soft_weight),
                                    float(d.hard_weight), float(d.hidden_weight),
                                    float(d.attention_weight))
    if not any((loss.soft_weight, loss.hard_weight, loss.hidden_weight, loss.attention_weight)):
      raise ValueError("distill: every loss weight is 0 (soft_weight, hard_weight, hidden_weight, "
                       "attention_weight)")
    if config.init.hf or config.init.checkpoint:
      raise ValueError("distill: the student comes from distill.teacher; unset init.hf and "
                       "init.checkpoint")
    return cls(path, int(step) if at else None, tuple(int(i) for i in d.student_layers),
               tuple(int(i) for i in d.layer_map), loss)


@dataclasses.dataclass
class Teacher:
  origin: str
  model_config: ModelConfig
  kind: str
  labels: list[str]
  vocab: str  # tokenizer file
  lowercase: bool
  params: dict | None  # host arrays, unrolled layers; dropped once the student is initialised


def load_teacher(config, spec: DistillSpec) -> Teacher:
  """The teacher's weights (host), architecture, labels and tokenizer, from either kind of folder."""
  from mebert.model.layout import normalize_params

  runtime = {k: config.model[k] for k in _RUNTIME_KEYS}
  path = spec.teacher
  if os.path.isdir(os.path.join(path, "checkpoints")):
    from mebert.train.checkpoints import restore_params_and_step

    params, saved, step = restore_params_and_step(path, inference.chosen_step(path, spec.teacher_step))
    task = saved.get("task") or {}
    if task.get("kind") not in TASK_KINDS:
      raise ValueError(f"distill.teacher={path}: checkpoint step {step} is not a fine-tuned model "
                       "(its config has no task.kind)")
    params = normalize_params(params)
    params.pop("cls", None)
    table = params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    cfg = ModelConfig.from_dict(saved["model"], vocab_size=int(table.shape[0]))
    data = saved.get("data") or {}
    return Teacher(f"{path}@{step}", cfg.replace(scan_layers=False, **runtime), task["kind"],
                   [str(x) for x in task.get("labels") or []], sources.saved_vocab(saved, path),
                   bool(data.get("lowercase", True)), params)
  if os.path.isfile(os.path.join(path, "config.json")):
    from mebert.interop.hf_import import load_hf_bert

    cfg, params, report = load_hf_bert(path, parity=False, heads=False, seed=int(config.seed),
                                       **runtime)
    if report.labels is None:
      raise ValueError(f"distill.teacher={path}: the Hugging Face model ({report.architecture}) "
                       "has no classifier; distil from a fine-tuned model")
    if not report.tokenizer:
      raise ValueError(f"distill.teacher={path}: no tokenizer.json or vocab.txt in the folder")
    return Teacher(path, cfg, report.task_kind, list(report.labels), report.tokenizer,
                   bool(config.data.lowercase), normalize_params(params))
  raise ValueError(f"distill.teacher={path}: neither a mebert fine-tuning workdir (no "
                   "checkpoints/) nor a Hugging Face folder (no config.json)")


def student_model_config(config, spec: DistillSpec, teacher: Teacher) -> ModelConfig:
  """The teacher cut to spec.student_layers, else config.model on the teacher's vocabulary."""
  t = teacher.model_config
  runtime = {k: config.model[k] for k in _RUNTIME_KEYS + ("remat_policy",)}
  if spec.student_layers:
    bad = [i for i in spec.student_layers if not 0 <= i < t.num_layers]
    if bad:
      raise ValueError(f"distill.student_layers={spec.student_layers}: teacher layer {bad[0]} "
                       f"does not exist ({teacher.origin} has {t.num_layers} layers, 0.."
                       f"{t.num_layers - 1})")
    return t.replace(num_layers=len(spec.student_layers), scan_layers=False, **runtime)
  model = config.model.to_dict()
  if model["vocab_size"] and model["vocab_size"] != t.vocab_size:
    raise ValueError(f"model.vocab_size={model['vocab_size']} differs from the teacher's "
                     f"{t.vocab_size}: the student reads the teacher's token ids (set it to 0)")
  return ModelConfig.from_dict({**model, "vocab_size": t.vocab_size, "scan_layers": False})


def layer_pairs(spec: DistillSpec, student_layers: int, teacher_layers: int):
  """(student layer, teacher layer) pairs: distill.layer_map, else the uniform map."""
  if not spec.layer_map:
    return tuple((j, (j + 1) * teacher_layers // student_layers - 1) for j in range(student_layers))
  if len(spec.layer_map) != student_layers:
    raise ValueError(f"distill.layer_map={spec.layer_map} has {len(spec.layer_map)} entries for a "
                     f"student of {student_layers} layers")
  bad = [i for i in spec.layer_map if not 0 <= i < teacher_layers]
  if bad:
    raise ValueError(f"distill.layer_map={spec.layer_map}: teacher layer {bad[0]} does not exist "
                     f"(the teacher has {teacher_layers} layers)")
  return tuple(enumerate(spec.layer_map))


def student_init_params(teacher_params: dict, student_layers: tuple[int, ...]) -> dict:
  """The teacher's embeddings, pooler, classifier and layers `student_layers` (as layer_0..)."""
  bert = teacher_params["bert"]
  encoder = {f"layer_{j}": bert["encoder"][f"layer_{t}"] for j, t in enumerate(student_layers)}
  if "final_LayerNorm" in bert["encoder"]:  # pre-LN models normalise after the last layer
    encoder["final_LayerNorm"] = bert["encoder"]["final_LayerNorm"]
  out = {"bert": {**bert, "encoder": encoder}}
  if "classifier" in teacher_params:
    out["classifier"] = teacher_params["classifier"]
  return out


def _student_run_config(config, student: ModelConfig, teacher: Teacher):
  """The fine-tuning config FineTuning runs: the student's architecture as a random init on the
  teacher's tokenizer and labels (copied layers are merged in by Distillation.initial_state)."""
  c = config_dict.ConfigDict(config.to_dict())
  c.model = config_dict.ConfigDict(dataclasses.asdict(student))
  c.data.vocab, c.data.lowercase = teacher.vocab, teacher.lowercase
  c.init.random = True  # config.init.* must be empty (DistillSpec): the layers come from the teacher
  c.task.labels = tuple(teacher.labels)
  return c


class _WithTeacher:
  """The loop's train_step(state, batch, seed), passing the teacher's params to the jitted step."""

  def __init__(self, step, teacher_params):
    self.step, self.teacher_params = step, teacher_params

  def __call__(self, state, batch, seed):
    return self.step(state, self.teacher_params, batch, seed)

  def _cache_size(self) -> int:
    return self.step._cache_size()


class Distillation(finetune.FineTuning):
  """FineTuning of the student, with the distillation step, the teacher on the same mesh, copied
  layers at a fresh start, and the distillation losses in the train logs."""

  name = "distill"

  def __init__(self, config, workdir: str):
    self.spec = DistillSpec.from_config(config)
    if not config.data.train_files and os.path.isdir(os.path.join(self.spec.teacher, "checkpoints")):
      from mebert.tasks import run_config  # the teacher's files, split and columns

      config = run_config.with_data_of(config, self.spec.teacher)
    self.teacher = load_teacher(config, self.spec)
    if self.teacher.kind != config.task.kind:
      raise ValueError(f"task.kind={config.task.kind} but the teacher {self.teacher.origin} is a "
                       f"{self.teacher.kind} model")
    student = student_model_config(config, self.spec, self.teacher)
    tcfg = self.teacher.model_config
    layer_pairs(self.spec, student.num_layers, tcfg.num_layers)  # checked before any write
    super().__init__(_student_run_config(config, student, self.teacher), workdir)
    student = self.source.model_config  # a resumed run keeps its checkpoints' architecture
    if self.labels != self.teacher.labels:
      raise ValueError(f"{workdir} was distilled with labels {self.labels}, the teacher "
                       f"{self.teacher.origin} has {self.teacher.labels}")
    pairs = layer_pairs(self.spec, student.num_layers, tcfg.num_layers)
    self.loss = dataclasses.replace(self.spec.loss, layer_pairs=pairs)
    projection = None
    if self.loss.wants_hidden and student.hidden_size != tcfg.hidden_size:
      projection = distill_steps.HiddenProjection(tcfg.hidden_size, student.compute_dtype,
                                                  student.storage_dtype, student.initializer_range)
    teacher_rt = inference.Runtime(self.config, tcfg, self.kind, self.labels,
                                   self.tokenizer.pad_id)
    compiled = distill_steps.compiled_steps(
        self.rt.train_model, self.rt.eval_model, teacher_rt.eval_model, projection, self.kind,
        steps.optimizer_key(config_dict.ConfigDict(self.config_json)), student.num_layers,
        self.loss, int(self.config.train.grad_accum_steps), self.rt.mesh, self.rt.rules)
    teacher_params = jax.device_put(
        jax.tree.map(lambda x: np.asarray(x, tcfg.storage_dtype), self.teacher.params),
        compiled.teacher_shardings)
    self.compiled = dataclasses.replace(  # the loop's steps, with the distillation state and step
        self.compiled, abstract_state=compiled.abstract_state, replicated=compiled.replicated,
        init=compiled.init, train_step=_WithTeacher(compiled.step, teacher_params))
    log.info("distilling %s (%d layers x %d) into %d layers x %d; layer pairs %s; projection: %s",
             self.teacher.origin, tcfg.num_layers, tcfg.hidden_size, student.num_layers,
             student.hidden_size, pairs, "yes" if projection is not None else "no")

  def initial_state(self, *args, **kwargs):
    step, state, selection = super().initial_state(*args, **kwargs)
    if step == 0 and self.spec.student_layers:  # fresh: start from the teacher's layers
      src = student_init_params(self.teacher.params, self.spec.student_layers)
      params, _ = init_from.merge_params(state.params, src,  # logs what it could not copy
                                         origin=f"distill.teacher={self.teacher.origin}")
      state = state.replace(params=params)
    self.teacher.params = None  # on the mesh now; the host copy was for the initialisation
    return step, state, selection

  def train_scalars(self, sums: dict, step: int) -> dict:
    """The fine-tuning scalars plus each distillation loss's mean over the window."""
    keys = ("distill_loss",) + tuple(f"distill_{name}" for name in distill_steps.LOSSES)
    steps_in_window = max(float(sums["steps"]), 1.0)
    return {**super().train_scalars(sums, step),
            **{k: float(sums[k]) / steps_in_window for k in keys}}

  def train(self) -> dict:
    return {**super().train(), "teacher": self.teacher.origin}


def run(config, workdir: str, mode: str, *, step: int | None = None, input_path: str | None = None,
        output_path: str | None = None) -> dict:
  """The entrypoint's dispatch for configs with a `distill` section: train distils; eval and
  predict read the student's workdir as any fine-tuning workdir."""
  if mode == "train":
    finetune.validate(config)
    if "," in workdir:
      raise ValueError("--mode=train takes one --workdir")
    return Distillation(config, workdir).train()
  return finetune.run(config, workdir, mode, step=step, input_path=input_path,
                      output_path=output_path)
