"""--mode=compile: will it fit? Lowers and compiles the train step for the configured mesh on the
current devices (no data, no real parameters) and reports per-device memory and FLOPs per step."""

from __future__ import annotations

import jax
import numpy as np

from mebert.train import trainer


def _abstract_batch(exp) -> dict:
  data = exp.config.data
  rows, length, preds = exp.batch_size, int(data.seq_len), int(data.max_predictions_per_seq)
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=exp.batch_sharding)
  batch = {k: spec((rows, length), np.int32) for k in ("input_ids", "token_type_ids",
                                                       "segment_ids", "positions")}
  batch.update(masked_lm_positions=spec((rows, preds), np.int32),
               masked_lm_ids=spec((rows, preds), np.int32),
               masked_lm_weights=spec((rows, preds), np.float32),
               next_sentence_labels=spec((rows,), np.int32))
  return batch


def compile_and_report(config, workdir: str) -> dict:
  exp = trainer.Experiment(config, workdir)
  with exp.sharding_context():
    compiled = exp.jitted_train_step().lower(exp.abstract_state, _abstract_batch(exp)).compile()
  report = {"devices": jax.device_count(), "mesh": dict(exp.mesh.shape),
            "global_batch": exp.batch_size, "seq_len": int(config.data.seq_len)}
  per_device_params = sum(
      int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize
      for a, s in zip(jax.tree.leaves(exp.abstract_state.params),
                      jax.tree.leaves(exp.state_shardings.params)))
  per_device_opt = sum(
      int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize
      for a, s in zip(jax.tree.leaves(exp.abstract_state.opt_state),
                      jax.tree.leaves(exp.state_shardings.opt_state)))
  total_params = sum(int(np.prod(a.shape)) * a.dtype.itemsize
                     for a in jax.tree.leaves(exp.abstract_state.params))
  report.update(param_bytes_per_device=per_device_params, opt_state_bytes_per_device=per_device_opt,
                param_bytes_unsharded=total_params)
  memory = compiled.memory_analysis()
  if memory is not None:
    for key in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                "generated_code_size_in_bytes"):
      report[key] = int(getattr(memory, key, 0))
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  if cost:
    report["flops_per_step_per_device"] = float(cost.get("flops", 0.0))
  return report
