"""--mode=compile: will it fit, and how fast can it be? Lowers and compiles the train step (and the
eval step) for the configured mesh, with no data and no real parameters, and reports per-device
memory, compiled against useful FLOPs, the collectives, and (on a TPU) a roofline bound.

  python -m mebert.train --config=configs/pretrain/bert_base.py --workdir=/tmp/fit --mode=compile \
      --config.compile.target=tpu:v5p-8

compile.target: a Cloud TPU slice (tpu:v4-8 ... tpu:v5p-128, tpu:v5e-256, tpu:v6e-64: see
mebert.parallel.tpu_slices) compiled for from any machine with the TPU compiler installed
(`pip install -r requirements-tpu.txt`, libtpu), no TPU attached: the mesh is built over the
slice's compile-only devices, so shardings, memory and collectives are the slice's own. Empty: the
devices of this machine; on a CPU machine fake the target's count first (JAX_NUM_CPU_DEVICES=8):
shardings and per-device bytes are then the target mesh's, the compiler's scheduling is the CPU's.
A config with model.vocab_size set needs no tokenizer here (nothing is trained or read).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import re

import jax
import numpy as np
import optax

from mebert.bench import flops as flops_lib
from mebert.data import pipeline
from mebert.parallel import mesh as mesh_lib
from mebert.parallel import tpu_slices
from mebert.train import hlo_collectives, hlo_traffic, roofline, steps, trainer

log = logging.getLogger(__name__)


class SizeOnlyTokenizer:
  """Stands in for the tokenizer where only its size matters (abstract shapes, compiling)."""

  def __init__(self, vocab_size: int):
    self.vocab_size = int(vocab_size)


def target_slice(config) -> tpu_slices.Slice | None:
  """The slice named by compile.target, None when empty (compile for this machine's devices)."""
  target = str(config.get("compile", {}).get("target", "") or "").strip()
  return tpu_slices.parse_target(target) if target else None


def target_devices(config, target: tpu_slices.Slice | None) -> list | None:
  """The slice's compile-only devices, after checking that the config's mesh divides them."""
  if target is None:
    return None
  try:
    mesh_lib.mesh_shape(config.mesh, target.num_chips, "tpu")
  except ValueError as e:
    raise ValueError(f"compile.target=tpu:{target.name} has {target.num_chips} chips "
                     f"({target.chip.cores_per_chip} TensorCore(s) each, one JAX device per chip): "
                     f"{e}") from None
  return tpu_slices.compile_only_devices(target)


def experiment(config, workdir: str, devices=None) -> trainer.Experiment:
  """The trainer's Experiment over `devices` (default: compile.target's, else this machine's),
  without training a vocabulary when model.vocab_size is given."""
  if devices is None:
    devices = target_devices(config, target_slice(config))
  vocab_size = int(config.model.get("vocab_size", 0) or 0)
  tokenizer = SizeOnlyTokenizer(vocab_size) if vocab_size > 0 else None
  return trainer.Experiment(config, workdir, tokenizer=tokenizer, devices=devices)


def _abstract_batch(exp, rows: int | None = None, split: str = "train") -> dict:
  """The step's batch as the pipeline lays it out (packed rows when data.pack is on)."""
  rows = exp.batch_size if rows is None else rows
  layout = pipeline.batch_layout(exp.config.data, split, rows)
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=exp.batch_sharding)
          for k, (shape, dtype) in layout.items() if k != "example_ids"}


def sharded_bytes(abstract_tree, shardings) -> tuple[int, int]:
  """(bytes on the most loaded device, unsharded bytes) of a tree of abstract arrays."""
  leaves = jax.tree.leaves(abstract_tree)
  sharding_leaves = jax.tree.leaves(
      shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
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


def _memory(compiled, prefix: str = "") -> dict:
  memory = compiled.memory_analysis()
  if memory is None:
    return {}
  out = {prefix + key: int(getattr(memory, key, 0) or 0)
         for key in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                     "alias_size_in_bytes", "generated_code_size_in_bytes")}
  # Donated state aliases its outputs: live at peak = arguments + outputs - aliased + temporaries.
  out[prefix + "peak_bytes_per_device_estimate"] = (
      out[prefix + "argument_size_in_bytes"] + out[prefix + "output_size_in_bytes"]
      - out[prefix + "alias_size_in_bytes"] + out[prefix + "temp_size_in_bytes"])
  return out


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  return dict(cost or {})


def useful_flops(exp) -> float:
  """Analytic training FLOPs of one step of full rows (mebert.bench.flops): every position a
  token attending to its whole row, the MLM head at the predictions a full row of text gets
  (masked_lm_prob of its tokens, at most the batch's prediction slots), the pooler and NSP head at
  the batch's [CLS] slots, no recomputation. What a compiled step does beyond it (a dense MLM head,
  spare prediction slots, rematerialisation) makes compiled/useful exceed 1; packed segments'
  shorter attention and padding are measured on real batches by mebert.bench instead."""
  cfg, data = exp.model_config, exp.config.data
  rows, length = exp.batch_size, int(data.seq_len)
  layout = pipeline.batch_layout(data, "train", rows)
  slots = layout["masked_lm_positions"][0][1]
  per_row = min(slots, max(1, round(float(data.get("masked_lm_prob", 0.15)) * length)))
  size = {"hidden_size": cfg.hidden_size, "num_layers": cfg.num_layers,
          "intermediate_size": cfg.intermediate_size}
  return flops_lib.step_flops(size, cfg.vocab_size, tokens=rows * length,
                              attention_pairs=rows * length * length, predictions=rows * per_row,
                              rows=math.prod(layout["next_sentence_labels"][0]),
                              geglu=cfg.hidden_act == "geglu")


def _loop_free_variant(config):
  """(config, runs): the same step without while loops, which XLA's cost analysis counts once, and
  how many of its runs make one real step. Scanned layers are unrolled (same work: remat and every
  product kept); with gradient accumulation the variant is one micro-batch's step (the whole batch
  at once might not fit, and the TPU compiler refuses what does not fit), run grad_accum_steps
  times, which counts the optimizer update that many times instead of once (a few percent of the
  bytes, far less of the FLOPs). None when the step has no loops."""
  accum = int(config.train.grad_accum_steps)
  if not (bool(config.model.scan_layers) or accum > 1):
    return None
  variant = config.copy_and_resolve_references()
  with variant.unlocked():
    variant.model.scan_layers = False
    variant.train.grad_accum_steps = 1
    variant.train.batch_size = int(config.train.batch_size) // accum
    variant.eval.batch_size = int(config.eval.batch_size or config.train.batch_size)
  return variant, accum


@contextlib.contextmanager
def _not_cached(exp):
  """No persistent-cache writes for compile-only devices: such an executable can be written but
  not read back ("PjRtCompiler must be constructed with a Client"), so each later compile of the
  same program would warn and compile again anyway."""
  if "CompileOnly" not in type(exp.mesh.devices.flat[0].client).__name__:
    yield
    return
  previous = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))
  try:
    yield
  finally:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", previous)


def compile_train_step(exp, compiler_options: dict | None = None):
  """The trainer's jitted train step, lowered on abstract state and batch and compiled."""
  with exp.sharding_context(), _not_cached(exp):
    return exp.jitted_train_step().lower(exp.abstract_state, _abstract_batch(exp)).compile(
        compiler_options=compiler_options)


def compile_and_report(config, workdir: str, compiler_options: dict | None = None) -> dict:
  """Compiles the train and eval steps (XLA `compiler_options` if given) and returns the report."""
  exp = experiment(config, workdir)
  return report(exp, compile_train_step(exp, compiler_options), compiler_options)


def report(exp, compiled, compiler_options: dict | None = None, *, eval_step: bool = True) -> dict:
  """The report of `compiled` (exp's train step); eval_step: also compile the eval step."""
  config, mesh_devices = exp.config, list(exp.mesh.devices.flat)
  target = target_slice(config)
  chip = target.chip if target else tpu_slices.chip_for_device_kind(mesh_devices[0].device_kind)
  tokens = exp.batch_size * int(config.data.seq_len)
  out = {"target": f"tpu:{target.name}" if target else "", "devices": len(mesh_devices),
         "platform": exp.platform, "device_kind": mesh_devices[0].device_kind,
         "hosts": exp.process_count, "mesh": dict(exp.mesh.shape),
         "global_batch": exp.batch_size, "seq_len": int(config.data.seq_len),
         "grad_accum_steps": int(config.train.grad_accum_steps),
         "num_steps": int(config.train.num_steps), "dtype": exp.model_config.dtype,
         "param_dtype": exp.model_config.param_dtype,
         "remat_policy": exp.model_config.remat_policy,
         "scan_layers": bool(exp.model_config.scan_layers)}
  out.update(state_memory(exp))
  out.update(_memory(compiled))
  hlo = compiled.as_text()
  kernels = _mosaic_kernels(hlo)
  splash = any(k.startswith("splash_mha") for k in kernels)
  out["attention_kernel"] = "splash (Mosaic)" if splash else "XLA"
  others = sorted({k for k in kernels if not k.startswith("splash_mha")})
  if others:  # the compiler's own kernels (e.g. "online-softmax"): their FLOPs go uncounted too
    out["uncosted_kernels"] = others
  found, unknown_loops = hlo_collectives.collectives(hlo, len(mesh_devices))
  out["collectives"] = hlo_collectives.summarize(found)
  if unknown_loops:
    out["collectives_loops_counted_once"] = unknown_loops

  cost, out["flops_source"] = _cost(compiled), "train step"
  traffic = hlo_traffic.hbm_traffic(hlo)
  variant = _loop_free_variant(config)
  if variant is not None:
    flat, runs = variant
    flat_compiled = compile_train_step(experiment(flat, exp.workdir, mesh_devices),
                                       compiler_options)
    cost = {k: float(v) * runs for k, v in _cost(flat_compiled).items()
            if k in ("flops", "bytes accessed")}
    traffic = hlo_traffic.hbm_traffic(flat_compiled.as_text()) * runs
    if runs > 1:
      # The micro-batch step updates the state every time, the real step once; instead it adds
      # each micro-batch's gradients (as large as the parameters) into a running sum.
      traffic += (2 * runs * out["param_bytes_per_device"]
                  - (runs - 1) * _update_traffic(exp, compiler_options))
    out["flops_source"] = ("the step without loops (scan_layers=False" +
                           (f", one micro-batch's step x {runs})" if runs > 1 else ")"))
  out["hbm_bytes_per_step_per_device"] = traffic
  if cost:
    flops = float(cost.get("flops", 0.0))  # the SPMD program: one device's share
    if splash:  # XLA's cost analysis does not see inside a Mosaic kernel
      out["splash_flops_per_step_estimate"] = splash_flops(exp)
      flops += out["splash_flops_per_step_estimate"] / len(mesh_devices)
    out["flops_per_step_per_device"] = flops
    out["flops_per_step"] = flops * len(mesh_devices)
    out["flops_per_token"] = out["flops_per_step"] / tokens
    out["xla_bytes_accessed_per_step_per_device"] = float(cost.get("bytes accessed", 0.0))
  out["useful_flops_per_step"] = useful_flops(exp)
  if "flops_per_step" in out:
    out["compiled_over_useful_flops"] = out["flops_per_step"] / out["useful_flops_per_step"]

  if eval_step:
    out.update(_eval_memory(exp, compiler_options))
  limit = chip.hbm_bytes if chip else _device_memory_limit()
  if limit is not None:
    out["device_memory_bytes"] = int(limit)
    if "peak_bytes_per_device_estimate" in out:
      out["fits"] = out["peak_bytes_per_device_estimate"] <= limit
  if chip is not None and "flops_per_step" in out:
    ici = sum(v["traffic_bytes_per_step"] for v in out["collectives"].values())
    out["chip"] = chip.generation
    out["roofline"] = roofline.bound(
        chip, flops_per_chip=out["flops_per_step_per_device"],
        hbm_bytes_per_chip=out["hbm_bytes_per_step_per_device"], ici_bytes_per_chip=ici,
        useful_flops_per_step=out["useful_flops_per_step"], tokens_per_step=tokens,
        num_chips=len(mesh_devices), num_steps=int(config.train.num_steps))
  for line in format_report(out).splitlines():
    log.info("%s", line)
  return out


def _mosaic_kernels(hlo: str) -> list[str]:
  """Names (numbering stripped) of the Mosaic custom calls, which XLA's cost analysis skips."""
  return [re.sub(r"\.\d+$", "", m.group(1)) for m in re.finditer(
      r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = .*custom_call_target=\"tpu_custom_call\"", hlo, re.M)]


def splash_flops(exp) -> float:
  """The splash kernels' matrix products in a train step, which XLA does not count: per head and
  row, forward Q K^T and P V, backward (separate dq and dkv kernels, each recomputing the scores)
  7 more products of L x L x head_dim, at full blocks (a local window skips some)."""
  cfg, rows, length = exp.model_config, exp.batch_size, int(exp.config.data.seq_len)
  return float(9 * 2 * length * length * cfg.hidden_size * rows * cfg.num_layers)


def _update_traffic(exp, compiler_options) -> float:
  """HBM bytes of the optimizer update alone (gradients in, state updated in place)."""

  def update(state, grads):
    updates, opt_state = exp.tx.update(grads, state.opt_state, state.params)
    return optax.apply_updates(state.params, updates), opt_state

  shardings = exp.state_shardings
  with exp.sharding_context(), _not_cached(exp):
    step = jax.jit(update, in_shardings=(shardings, shardings.params),
                   out_shardings=(shardings.params, shardings.opt_state), donate_argnums=0)
    compiled = step.lower(exp.abstract_state, exp.abstract_state.params).compile(
        compiler_options=compiler_options)
  return hlo_traffic.hbm_traffic(compiled.as_text())


def _eval_memory(exp, compiler_options) -> dict:
  """The eval step's peak, compiled like the trainer's (parameters only, the eval batch size)."""
  batch = _abstract_batch(exp, exp.eval_batch_size, "eval")
  with exp.sharding_context(), _not_cached(exp):
    step = jax.jit(functools.partial(steps.eval_step, model=exp.eval_model),
                   in_shardings=(exp.state_shardings.params, exp.batch_sharding))
    compiled = step.lower(exp.abstract_state.params, batch).compile(
        compiler_options=compiler_options)
  memory = _memory(compiled, "eval_")
  return {"eval_peak_bytes_per_device_estimate": memory["eval_peak_bytes_per_device_estimate"]
          } if memory else {}


def _gib(n) -> str:
  for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if abs(n) >= size:
      return f"{n / size:8.2f} {unit}"
  return f"{n:8d} B  "


def format_report(report: dict) -> str:
  """The human-readable summary (the JSON line on stdout carries every number)."""
  where = report.get("target") or f"{report['devices']} {report.get('platform', '')} devices"
  lines = [f"{where}: mesh {report['mesh']} ({report['devices']} x {report.get('device_kind', '')},"
           f" {report.get('hosts', 1)} host(s)), global batch {report['global_batch']} x "
           f"{report['seq_len']} tokens, {report.get('dtype', '')} compute",
           f"  parameters      {report['param_count']:,}"]
  rows = [("params", "param_bytes"), ("optimizer state", "opt_state_bytes"),
          ("params + opt", "state_bytes")]
  for label, key in rows:
    lines.append(f"  {label:15s} {_gib(report[key + '_per_device'])} per device "
                 f"(unsharded {_gib(report[key + '_unsharded'])})")
  lines.append(f"  state sharded   {report['state_sharding_factor']:.2f}x")
  for label, key in (("arguments", "argument_size_in_bytes"), ("outputs", "output_size_in_bytes"),
                     ("aliased", "alias_size_in_bytes"), ("temporaries", "temp_size_in_bytes"),
                     ("peak (est.)", "peak_bytes_per_device_estimate"),
                     ("eval peak", "eval_peak_bytes_per_device_estimate")):
    if key in report:
      lines.append(f"  {label:15s} {_gib(report[key])} per device")
  if "device_memory_bytes" in report:
    peak = report.get("peak_bytes_per_device_estimate", 0)
    lines.append(f"  device memory   {_gib(report['device_memory_bytes'])}: "
                 f"{'fits' if report.get('fits') else 'DOES NOT FIT'} "
                 f"({100 * peak / report['device_memory_bytes']:.0f}% at peak)")
  if "flops_per_step" in report:
    lines.append(f"  FLOPs per step  {report['flops_per_step']:.3e} compiled "
                 f"({report['flops_per_step_per_device']:.3e} per device, "
                 f"{report['flops_per_token']:.3e} per token)")
    lines.append(f"  useful FLOPs    {report['useful_flops_per_step']:.3e}: compiled/useful "
                 f"{report['compiled_over_useful_flops']:.3f}")
  if "attention_kernel" in report:
    lines.append(f"  attention       {report['attention_kernel']}")
  if report.get("uncosted_kernels"):
    lines.append(f"  not in FLOPs    {', '.join(report['uncosted_kernels'])} (kernels XLA's cost "
                 "analysis does not look into)")
  if "hbm_bytes_per_step_per_device" in report:
    lines.append(f"  HBM traffic     {_gib(report['hbm_bytes_per_step_per_device'])} per device "
                 f"(XLA's bytes accessed: "
                 f"{_gib(report.get('xla_bytes_accessed_per_step_per_device', 0)).strip()})")
  for kind, c in report.get("collectives", {}).items():
    if c["ops"]:
      lines.append(f"  {kind:15s} {c['ops']:5d} per step, {_gib(c['bytes_per_step'])} per device")
  r = report.get("roofline")
  if r:
    lines.append(f"  roofline ({report['chip']}): compute {r['compute_s'] * 1e3:.2f} ms, HBM "
                 f"{r['hbm_s'] * 1e3:.2f} ms, ICI {r['ici_s'] * 1e3:.2f} ms per step -> "
                 f">= {r['step_time_lower_bound_s'] * 1e3:.2f} ms ({r['bound_by']}-bound)")
    if "tokens_per_s_per_chip_upper_bound" in r:
      lines.append(f"  at that bound   <= {r['tokens_per_s_per_chip_upper_bound']:,.0f} tokens/s "
                   f"per chip, useful MFU <= {100 * r['useful_mfu_upper_bound']:.1f}%, "
                   f">= {r['days_lower_bound']:.2f} days for train.num_steps="
                   f"{report['num_steps']:,} "
                   "(a continued run trains fewer)")
  return "\n".join(lines)


def parameter_specs(config, workdir: str = "/tmp/mebert-specs") -> dict:
  """{param path: mesh axes per dimension} for the config's mesh on the current devices."""
  exp = experiment(config, workdir)
  return mesh_lib.partition_specs(exp.state_shardings.params)
