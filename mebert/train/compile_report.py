"""--mode=compile: will it fit? Lowers and compiles the train step for the configured mesh on the
current devices (no data, no real parameters) and reports per-device memory and FLOPs per step.

  python -m mebert.train --config=configs/pretrain/bert_base.py --workdir=/tmp/fit --mode=compile \
      --config.mesh.data=1 --config.mesh.fsdp=8

On a CPU machine, fake the target's device count first (JAX_NUM_CPU_DEVICES=8 or
XLA_FLAGS=--xla_force_host_platform_device_count=8): the shardings, per-device bytes and FLOPs are
those of the target mesh; only the compiler's scheduling (and so temporaries) differs by platform.
A config with model.vocab_size set needs no tokenizer here (nothing is trained or read).
"""

from __future__ import annotations

import logging

import jax
import numpy as np

from mebert.data import pipeline
from mebert.parallel import mesh as mesh_lib
from mebert.train import trainer

log = logging.getLogger(__name__)


class SizeOnlyTokenizer:
  """Stands in for the tokenizer where only its size matters (abstract shapes, compiling)."""

  def __init__(self, vocab_size: int):
    self.vocab_size = int(vocab_size)


def experiment(config, workdir: str) -> trainer.Experiment:
  """The trainer's Experiment; without training a vocabulary when model.vocab_size is given."""
  vocab_size = int(config.model.get("vocab_size", 0) or 0)
  tokenizer = SizeOnlyTokenizer(vocab_size) if vocab_size > 0 else None
  return trainer.Experiment(config, workdir, tokenizer=tokenizer)


def _abstract_batch(exp) -> dict:
  """The train step's batch as the pipeline lays it out (packed rows when data.pack is on)."""
  layout = pipeline.batch_layout(exp.config.data, "train", exp.batch_size)
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=exp.batch_sharding)
          for k, (shape, dtype) in layout.items() if k != "example_ids"}


def sharded_bytes(abstract_tree, shardings) -> tuple[int, int]:
  """(bytes on the most loaded device, unsharded bytes) of a tree of abstract arrays."""
  leaves = jax.tree.leaves(abstract_tree)
  sharding_leaves = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  if len(leaves) != len(sharding_leaves):
    raise ValueError(f"{len(leaves)} arrays but {len(sharding_leaves)} shardings")
  per_device, total = 0, 0
  for a, s in zip(leaves, sharding_leaves):
    itemsize = np.dtype(a.dtype).itemsize
    per_device += int(np.prod(s.shard_shape(a.shape))) * itemsize
    total += int(np.prod(a.shape)) * itemsize
  return per_device, total


def state_memory(exp) -> dict:
  """Per-device and unsharded bytes of the parameters and the optimizer state (no compiling)."""
  state, shardings = exp.abstract_state, exp.state_shardings
  params_dev, params_all = sharded_bytes(state.params, shardings.params)
  opt_dev, opt_all = sharded_bytes(state.opt_state, shardings.opt_state)
  return {
      "param_count": int(sum(np.prod(a.shape) for a in jax.tree.leaves(state.params))),
      "param_bytes_per_device": params_dev, "param_bytes_unsharded": params_all,
      "opt_state_bytes_per_device": opt_dev, "opt_state_bytes_unsharded": opt_all,
      "state_bytes_per_device": params_dev + opt_dev, "state_bytes_unsharded": params_all + opt_all,
      "state_sharding_factor": round((params_all + opt_all) / max(params_dev + opt_dev, 1), 3),
  }


def _device_memory_limit() -> int | None:
  try:
    stats = jax.local_devices()[0].memory_stats() or {}
  except Exception:  # noqa: BLE001 - CPU and some plugins have no memory stats
    return None
  return int(stats["bytes_limit"]) if "bytes_limit" in stats else None


def compile_and_report(config, workdir: str, compiler_options: dict | None = None) -> dict:
  """Compiles the train step (XLA `compiler_options` if given) and returns the report."""
  exp = experiment(config, workdir)
  report = {"devices": jax.device_count(), "platform": jax.devices()[0].platform,
            "mesh": dict(exp.mesh.shape), "global_batch": exp.batch_size,
            "seq_len": int(config.data.seq_len),
            "grad_accum_steps": int(config.train.grad_accum_steps)}
  report.update(state_memory(exp))
  with exp.sharding_context():
    compiled = exp.jitted_train_step().lower(exp.abstract_state, _abstract_batch(exp)).compile(
        compiler_options=compiler_options)
  memory = compiled.memory_analysis()
  if memory is not None:
    for key in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                "alias_size_in_bytes", "generated_code_size_in_bytes"):
      report[key] = int(getattr(memory, key, 0) or 0)
    # Donated state aliases its outputs: live at peak = arguments + outputs - aliased + temporaries.
    report["peak_bytes_per_device_estimate"] = (
        report["argument_size_in_bytes"] + report["output_size_in_bytes"]
        - report["alias_size_in_bytes"] + report["temp_size_in_bytes"])
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  if cost:
    flops = float(cost.get("flops", 0.0))  # the SPMD program: one device's share
    report["flops_per_step_per_device"] = flops
    report["flops_per_step"] = flops * jax.device_count()
    tokens = exp.batch_size * int(config.data.seq_len)
    report["flops_per_token"] = report["flops_per_step"] / tokens
  limit = _device_memory_limit()
  if limit is not None:
    report["device_memory_bytes"] = limit
    if "peak_bytes_per_device_estimate" in report:
      report["fits"] = report["peak_bytes_per_device_estimate"] <= limit
  for line in format_report(report).splitlines():
    log.info("%s", line)
  return report


def _gib(n) -> str:
  for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if abs(n) >= size:
      return f"{n / size:8.2f} {unit}"
  return f"{n:8d} B  "


def format_report(report: dict) -> str:
  """The human-readable summary (the JSON line on stdout carries every number)."""
  lines = [f"mesh {report['mesh']} on {report['devices']} {report.get('platform', '')} devices, "
           f"global batch {report['global_batch']} x {report['seq_len']} tokens",
           f"  parameters      {report['param_count']:,}"]
  rows = [("params", "param_bytes"), ("optimizer state", "opt_state_bytes"),
          ("params + opt", "state_bytes")]
  for label, key in rows:
    lines.append(f"  {label:15s} {_gib(report[key + '_per_device'])} per device "
                 f"(unsharded {_gib(report[key + '_unsharded'])})")
  lines.append(f"  state sharded   {report['state_sharding_factor']:.2f}x")
  for label, key in (("arguments", "argument_size_in_bytes"), ("outputs", "output_size_in_bytes"),
                     ("aliased", "alias_size_in_bytes"), ("temporaries", "temp_size_in_bytes"),
                     ("peak (est.)", "peak_bytes_per_device_estimate")):
    if key in report:
      lines.append(f"  {label:15s} {_gib(report[key])} per device")
  if "device_memory_bytes" in report:
    lines.append(f"  device memory   {_gib(report['device_memory_bytes'])}: "
                 f"{'fits' if report.get('fits') else 'DOES NOT FIT'}")
  if "flops_per_step" in report:
    lines.append(f"  FLOPs per step  {report['flops_per_step']:.3e} "
                 f"({report['flops_per_step_per_device']:.3e} per device, "
                 f"{report['flops_per_token']:.3e} per token)")
  return "\n".join(lines)


def parameter_specs(config, workdir: str = "/tmp/mebert-specs") -> dict:
  """{param path: mesh axes per dimension} for the config's mesh on the current devices."""
  exp = experiment(config, workdir)
  return mesh_lib.partition_specs(exp.state_shardings.params)
