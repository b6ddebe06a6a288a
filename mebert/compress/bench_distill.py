"""Inference cost of a distilled student next to its teacher, on the config's held-out split.

  python -m mebert.compress.bench_distill --config=configs/distill/sst2_minilm_3layer.py \
      --teacher=runs/sst2 --student=runs/sst2_l3 [--rounds=3] [--config.eval.batch_size=64]

Both models predict the same held-out examples (data.eval_files, else the data.holdout_fraction
part of data.train_files: what training evaluated on; a config that names no files, as the
distillation configs, takes them from the student's workdir, as its training did) with the eval
batching of --mode=eval. Each first predicts once (compiling its buckets; reported apart), then
the two alternate for --rounds timed passes each and the best pass counts, so drifting background
load favours neither. FLOPs per example: analytic (matrix products of the real tokens only: 2 per
multiply-add, attention over each example's own length, pooler and classifier; mebert.bench.flops'
conventions) and XLA's count of the compiled eval programs (padded batches as executed). The last
stdout line is JSON.
--teacher takes a fine-tuning workdir (WORKDIR@STEP too) or a Hugging Face folder.
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mebert import host_memory


def define_flags():
  """Flags only when run as a program: tests import `measure` beside other modules' --config."""
  config_flags.DEFINE_config_file("config", None, "Distillation (or fine-tuning) config.",
                                  lock_config=True)
  flags.DEFINE_string("teacher", None, "Teacher: fine-tuning workdir or HF folder.")
  flags.DEFINE_string("student", None, "Student: the distillation workdir.")
  flags.DEFINE_integer("rounds", 3, "Timed passes per model (best kept).")
  flags.mark_flags_as_required(["config", "teacher", "student"])


def load_model(config, path: str):
  """An inference.Member for a fine-tuning workdir (WORKDIR@STEP) or a Hugging Face folder."""
  import jax

  from mebert.compress import distill
  from mebert.tasks import batching, inference

  where, at, step = path.rpartition("@") if "@" in path else (path, "", "")
  where = where if at else path
  if os.path.isdir(os.path.join(where, "checkpoints")):
    return inference.load_member(config, where, int(step) if at else None)
  spec = distill.DistillSpec(where, None, (), (), distill.distill_steps.LossConfig())
  teacher = distill.load_teacher(config, spec)
  tokenizer = batching.TaskTokenizer(teacher.vocab, teacher.lowercase)
  rt = inference.Runtime(config, teacher.model_config, teacher.kind, teacher.labels,
                         tokenizer.pad_id)
  params = jax.device_put(jax.tree.map(lambda x: np.asarray(x, teacher.model_config.storage_dtype),
                                       teacher.params), rt.param_shardings())
  return inference.Member(where, 0, teacher.kind, teacher.labels, rt, params, tokenizer,
                          int(config.data.seq_len))


def analytic_flops(cfg, lengths: np.ndarray, num_outputs: int) -> float:
  """Forward FLOPs of the real tokens, summed over the examples."""
  from mebert.bench.flops import layer_matmul_weights

  tokens = float(np.sum(lengths))
  pairs = float(np.sum(lengths.astype(np.float64) ** 2))  # each token attends to its own example
  per_layer = layer_matmul_weights(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act == "geglu")
  encoder = cfg.num_layers * (2 * per_layer * tokens + 4 * cfg.hidden_size * pairs)
  heads = len(lengths) * 2 * (cfg.hidden_size * cfg.hidden_size + cfg.hidden_size * num_outputs)
  return float(encoder + heads)


def xla_flops(member, enc, batch_size: int, buckets) -> float:
  """XLA's FLOP count of the compiled eval programs over the eval plan (padded, as executed)."""
  from mebert.tasks import batching

  per_length = {}
  total = 0.0
  for rows, length in batching.eval_batches(enc.lengths, buckets, batch_size):
    if length not in per_length:
      batch = member.runtime.global_batch(batching.make_batch(enc, rows, length, member.kind,
                                                              member.runtime.pad_id))
      with member.runtime.sharding_context():
        compiled = member.runtime.predict_fn.lower(member.params, batch).compile()
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      per_length[length] = float((cost or {}).get("flops", float("nan")))
    total += per_length[length]
  return total


def measure(config, teacher_path: str, student_path: str, rounds: int = 3) -> dict:
  import jax

  from mebert.tasks import batching, inference, model as task_model, run_config

  if not config.data.train_files and not config.data.get("eval_files"):
    # As training did: the distillation config names no files, the student's workdir has them.
    config = run_config.with_data_of(config, student_path.rpartition("@")[0] or student_path)
  examples = inference.dataset_splits(config, need_train=False)[1]
  members = {"teacher": load_model(config, teacher_path), "student": load_model(config, student_path)}
  batch_size = int(config.eval.batch_size)
  out: dict = {"examples": len(examples), "batch_size": batch_size, "rounds": rounds,
               "device": f"{jax.devices()[0].platform} x{jax.device_count()}"}
  encoded, runs, best = {}, {}, {}
  for name, m in members.items():
    encoded[name] = batching.encode_examples(examples, m.tokenizer, m.kind, m.labels, m.seq_len,
                                             labeled=False)
    buckets = batching.bucket_lengths(m.seq_len, tuple(config.data.buckets))
    runs[name] = lambda m=m, enc=encoded[name], b=buckets: inference.predict_probs(
        m.runtime, m.params, enc, batch_size, b, config.task.truncated_tag)
    start = time.perf_counter()
    outputs = runs[name]()
    first = time.perf_counter() - start
    cfg = m.runtime.model_config
    n_out = task_model.num_outputs(m.kind, m.labels)
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(m.params))
    out[name] = {
        "path": m.workdir, "step": m.step, "num_layers": cfg.num_layers,
        "hidden_size": cfg.hidden_size, "params": params,
        "first_pass_s": first,
        "flops_per_example": analytic_flops(cfg, encoded[name].lengths, n_out) / len(examples),
        "xla_flops_per_example": xla_flops(m, encoded[name], batch_size, buckets) / len(examples),
        **{k: v for k, v in inference.score(m.kind, m.labels, outputs, examples,
                                            config.task.positive_label).items()
           if isinstance(v, (int, float))}}
    best[name] = float("inf")
  for _ in range(rounds):  # alternate, so that load changes hit both alike
    for name in members:
      start = time.perf_counter()
      runs[name]()
      best[name] = min(best[name], time.perf_counter() - start)
  for name in members:
    out[name].update(eval_s=best[name], examples_per_s=len(examples) / best[name])
  t, s = out["teacher"], out["student"]
  out["student_over_teacher"] = {
      "eval_time": s["eval_s"] / t["eval_s"],
      "flops_per_example": s["flops_per_example"] / t["flops_per_example"],
      "xla_flops_per_example": s["xla_flops_per_example"] / t["xla_flops_per_example"],
      "params": s["params"] / t["params"]}
  return out


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  host_memory.configure()  # before JAX starts: the opt-in host tuning (mebert/host_memory.py)
  f = flags.FLAGS
  result = measure(f.config, f.teacher, f.student, f.rounds)
  print(json.dumps(result, sort_keys=True), flush=True)


if __name__ == "__main__":
  define_flags()
  try:
    app.run(main)
  except (ValueError, OSError, RuntimeError) as e:  # bad input: one line, non-zero exit
    raise SystemExit(f"error: {e}") from None
