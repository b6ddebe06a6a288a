"""Post-training int8 weights for inference (per output channel, symmetric; embedding tables per
row), dequantized inside the jitted forward pass.

The arithmetic is mebert.model.int8's (re-exported here: the API users know), the fine-tuned
eval/predict runtime mebert.tasks.quantized's; this module adds the int8 evaluation of a
pretraining checkpoint.

  qparams = quantize_params(params)                       # host or device arrays
  fn = jax.jit(dequantizing(predict, jnp.float32))        # fn(qparams, batch)
  weight_bytes(qparams) / weight_bytes(params)            # ~0.25-0.26 for BERT-family models
  qparams, qshardings = quantize_sharded(params, shardings)   # on a mesh: stays sharded

Entry points: `python -m mebert.embed --quantize=int8`, `python -m mebert.train --mode=eval|predict
--quantize=int8` (fine-tuning: config.eval.quantize, through quantize_task_runtime; pretraining:
evaluate_pretraining_checkpoint).
"""

from __future__ import annotations

from mebert.model.int8 import (  # noqa: F401  (re-exported)
    MODES, QMAX, QArray, check_mode, dequantize, dequantizing, describe, fp32_bytes, log_report,
    quantize_array, quantize_params, quantize_sharded, quantized_axis, quantized_shardings, report,
    weight_bytes)
from mebert.tasks.quantized import quantize_task_runtime  # noqa: F401  (re-exported)


class _Dequantizing:
  """Stands in for a flax model inside a pure step: apply() dequantizes the params first."""

  def __init__(self, model, dtype):
    self.model, self.dtype = model, dtype

  def apply(self, variables, *args, **kwargs):
    variables = {**variables, "params": dequantize(variables["params"], self.dtype)}
    return self.model.apply(variables, *args, **kwargs)


def evaluate_pretraining_checkpoint(config, workdir: str, step: int | None = None,
                                    mode: str = "int8") -> dict:
  """--mode=eval --quantize=int8 on a pretraining workdir: mebert.train.trainer's evaluation of a
  checkpoint with int8 weights (quantized where they lie on the mesh); the metrics, with the weight
  bytes, go to eval_step_<N>_int8.json next to the float eval_step_<N>.json."""
  from mebert.train import checkpoints, trainer

  if check_mode(mode) == "none":
    return trainer.evaluate_checkpoint(config, workdir, step)
  exp = trainer.Experiment(config, workdir)
  params, _, restored = checkpoints.restore_params_and_step(
      workdir, step, abstract_params=exp.abstract_state.params)
  qparams, qshardings = quantize_sharded(params, exp.state_shardings.params)
  del params
  exp.eval_model = _Dequantizing(exp.eval_model, exp.model_config.compute_dtype)
  exp.state_shardings = exp.state_shardings.replace(params=qshardings)
  metrics = exp.evaluate(qparams)
  r = log_report(qparams)
  metrics.update(step=int(restored), quantize=mode, weight_bytes=r["weight_bytes"],
                 weight_bytes_ratio=r["weight_bytes_ratio"])
  trainer.write_json(workdir, f"eval_step_{restored}_{mode}.json", metrics)
  return metrics
