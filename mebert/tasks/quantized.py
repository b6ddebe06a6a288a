"""int8 weights in fine-tuning: the eval/predict runtime of a fine-tuned model with post-training
int8 weights (config.eval.quantize, --quantize=int8) and quantization-aware training
(config.train.quantize_aware). The arithmetic is mebert.model.int8's and mebert.model.qat's."""

from __future__ import annotations

import functools
import logging

import jax

from mebert.model import int8, qat
from mebert.tasks import steps

log = logging.getLogger(__name__)


def quantize_task_runtime(rt, params, mode: str, name: str = "model"):
  """Fine-tuned eval/predict (mebert.tasks.inference): quantizes a member's sharded params where
  they lie and points the runtime's predict at a jitted, dequantizing predict step; returns the
  int8 params to predict with."""
  if int8.check_mode(mode) == "none":
    return params
  qparams, qshardings = int8.quantize_sharded(params, rt.param_shardings())
  fn = functools.partial(steps.predict_step, model=rt.eval_model, kind=rt.kind)
  rt.predict_fn = jax.jit(int8.dequantizing(fn, rt.model_config.compute_dtype),
                          in_shardings=(qshardings, rt.batch_sharding))
  int8.log_report(qparams, f"{name}: int8 weights")
  return qparams


def wrap_runtime(rt, mode: str) -> None:
  """Fine-tuning: rt's train and eval models with QAT, before the steps are compiled; eval/predict
  runtimes stay float (PTQ is --quantize=int8)."""
  if qat.check_mode(mode) == "none":
    return
  rt.train_model = qat.quantize_aware(rt.train_model, mode)
  rt.eval_model = qat.quantize_aware(rt.eval_model, mode)
