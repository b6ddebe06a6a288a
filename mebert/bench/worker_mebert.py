"""Times mebert's training step (the trainer's jitted, donated `steps.train_step`) on given batches.

  python -m mebert.bench.worker_mebert --spec=SPEC.json --batches=B.npz --out=OUT.json

Run by the harness in its own process, so that its peak memory and threads are its own. Also
measures the machine's float32 matrix-product rate (CPU) or looks up the accelerator's bf16 peak.
"""

from __future__ import annotations

import functools
import time


from mebert.bench import batches as batches_lib
from mebert.bench import timing

# Dense bf16 peak FLOP/s per chip by jax `device_kind` (vendor datasheets; no sparsity).
ACCELERATOR_BF16_PEAK = {
    "TPU v2": 45e12, "TPU v3": 123e12, "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12,
    "TPU v5p": 459e12, "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12, "TPU7x": 2307e12,
    "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100": 989e12, "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H200": 989e12, "NVIDIA GH200": 989e12, "NVIDIA B200": 2250e12,
    "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12, "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12, "NVIDIA L4": 121e12, "NVIDIA A10G": 70e12, "Tesla V100-SXM2-16GB": 125e12,
}


def accelerator_peak(device_kind: str) -> float | None:
  if device_kind in ACCELERATOR_BF16_PEAK:
    return ACCELERATOR_BF16_PEAK[device_kind]
  for name, peak in sorted(ACCELERATOR_BF16_PEAK.items(), key=lambda kv: -len(kv[0])):
    if device_kind.startswith(name):
      return peak
  return None


def matmul_timer(n: int, dtype="float32"):
  """Compiles (and runs once) a jitted n x n x n product; returns `rate(repeats)`: the FLOP/s of
  `repeats` back-to-back products, and of the fastest one when best=True."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(jnp.matmul)
  f(a, b).block_until_ready()

  def rate(repeats: int = 1, best: bool = False) -> float:
    return timing.product_rate(lambda: f(a, b).block_until_ready(), 2 * n**3, repeats, best)

  return rate


def matmul_rate(n: int, dtype="float32", repeats: int = 3) -> float:
  """FLOP/s of a jitted n x n x n product, best of `repeats` (after one compile-and-run)."""
  return matmul_timer(n, dtype)(repeats, best=True)


def _parse_value(text: str):
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  return {"true": True, "false": False}.get(text.lower(), text)


def run(spec: dict, batch_path: str) -> dict:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from ml_collections import config_dict

  from mebert.model.config import ModelConfig
  from mebert.model.pretraining import BertForPreTraining
  from mebert.parallel import mesh as mesh_lib
  from mebert.train import optimizer, steps
  from mebert.train.defaults import pretrain_defaults

  rss_start = timing.current_rss_mb()
  device = jax.devices()[0]
  out = {"platform": device.platform, "device_kind": device.device_kind, "jax": jax.__version__}
  between_rounds = None
  if device.platform == "cpu":
    if spec.get("peak_size", 4096) > 0:
      # Read before timing (best of 3) and again between the timed rounds (2 products each);
      # the harness reports the best of all these readings beside the hardware peak.
      out["matmul_size"] = int(spec.get("peak_size", 4096))
      matmul = matmul_timer(out["matmul_size"])
      out["matmul_flops_per_s_best_of_3"] = matmul(3, best=True)
      between_rounds = lambda: matmul(2)
  else:
    out["accelerator_bf16_peak_flops_per_s"] = accelerator_peak(device.device_kind)
    if out["accelerator_bf16_peak_flops_per_s"] is None:  # unknown chip: measure instead
      out["matmul_flops_per_s"] = matmul_rate(8192, "bfloat16")
      out["matmul_size"] = 8192

  overrides = {k: _parse_value(v) for k, v in spec.get("model_overrides", {}).items()}
  cfg = ModelConfig(vocab_size=spec["vocab_size"], max_position_embeddings=max(512, spec["seq_len"]),
                    **spec["size"]).replace(**overrides)
  out["model_config"] = {k: getattr(cfg, k) for k in ("hidden_size", "num_layers", "num_heads",
                                                      "intermediate_size", "vocab_size", "dtype",
                                                      "attention_backend", "scan_layers",
                                                      "remat_policy", "dropout_rate",
                                                      "attention_dropout_rate")}
  train_cfg = pretrain_defaults().train
  train_cfg.warmup_steps, train_cfg.num_steps = 100, 10_000
  tx, schedule = optimizer.make_optimizer(train_cfg), optimizer.learning_rate_schedule(train_cfg)
  mesh = mesh_lib.make_mesh(config_dict.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}),
                            devices=jax.devices()[:1])
  rules = mesh_lib.DEFAULT_RULES
  host_batches = batches_lib.load(batch_path, "mebert")
  example = jax.tree.map(lambda x: jnp.asarray(x[:1]), host_batches[0])
  init = functools.partial(steps.init_train_state, model=BertForPreTraining(cfg), tx=tx,
                           example_batch=example)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init, jax.random.key(0))
    shardings = mesh_lib.logical_shardings(boxed, mesh, rules)
    state = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(jax.random.key(0))
    step = jax.jit(functools.partial(steps.train_step, model=BertForPreTraining(cfg, deterministic=False),
                                     tx=tx, schedule=schedule, seed=0),
                   in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
                   out_shardings=(shardings, None), donate_argnums=0)
    device_batches = [mesh_lib.global_batch(b, mesh) for b in host_batches]
    start = time.perf_counter()
    compiled = step.lower(state, device_batches[0]).compile()
    out["compile_s"] = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if cost and "flops" in cost:
      out["xla_flops_per_step"] = float(cost["flops"])

    holder = {"state": state}

    def run_steps(n: int, first: int = 0) -> None:
      s, metrics = holder["state"], None
      for i in range(n):
        s, metrics = compiled(s, device_batches[(first + i) % len(device_batches)])
      jax.block_until_ready((s, metrics))
      holder["state"] = s
      holder["metrics"] = metrics

    start = time.perf_counter()
    run_steps(1)
    out["first_step_s"] = time.perf_counter() - start
    if spec["warmup"] > 1:
      run_steps(spec["warmup"] - 1, first=1)
    out.update(timing.timed_rounds(run_steps, steps=spec["steps"], rounds=spec["rounds"],
                                   between_rounds=between_rounds))
    if between_rounds is not None:
      out["matmul_readings_flops_per_s"] = out.pop("between_rounds_readings")
      out["matmul_flops_per_s"] = max(out["matmul_readings_flops_per_s"]
                                      + [out["matmul_flops_per_s_best_of_3"]])
    out["final_loss"] = float(holder["metrics"]["loss"])
  out["peak_rss_mb"] = timing.peak_rss_mb()
  out["rss_at_start_mb"] = rss_start
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    out["device_peak_bytes"] = stats.get("peak_bytes_in_use")
    out["device_bytes_limit"] = stats.get("bytes_limit")
  return out


def main(argv=None) -> None:
  timing.worker_main(run, __doc__.split("\n")[0], argv)


if __name__ == "__main__":
  main()
