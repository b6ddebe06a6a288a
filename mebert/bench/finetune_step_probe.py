"""Where a fine-tuning step's time goes: the compiled train step of a fine-tuning config timed on
fixed batches, packed (each row count the epoch uses) and padded (32 x 16/32/64).

  python -m mebert.bench.finetune_step_probe --config=configs/finetune/sst2.py:GLUE/SST-2 \\
      [--config.data.max_train_examples=3000] [--steps=8]

Prints seconds per step and real tokens per batch; a per-slot cost that is flat in the batch shape
means the step is compute-bound per token, a large constant means the optimizer dominates.
"""

from __future__ import annotations

import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mebert import host_memory
from mebert.tasks import batching, finetune

_CONFIG = config_flags.DEFINE_config_file("config", None, "Fine-tuning config.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 8, "Timed steps per batch shape (after one warm-up).")


def main(argv):
  del argv
  host_memory.configure()  # before JAX starts: the opt-in host tuning (mebert/host_memory.py)
  run = finetune.FineTuning(_CONFIG.value, tempfile.mkdtemp(prefix="probe-"))
  state = run.compiled.init(jax.random.key(0, impl="rbg"))
  seed = jax.device_put(np.int32(0), run.compiled.replicated)
  batches = run._epoch_batches(0)

  def timed(batch) -> float:
    nonlocal state
    device_batch = run.rt.global_batch(batch)
    state, metrics = run.compiled.train_step(state, device_batch, seed)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(_STEPS.value):
      state, metrics = run.compiled.train_step(state, device_batch, seed)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / _STEPS.value

  with run.rt.sharding_context():
    if run.pack:
      print("steps of the first epoch by packed row count:",
            dict(zip(*np.unique([r for _, r in batches], return_counts=True))))
      first = {}
      for rows, size in batches:
        first.setdefault(size, rows)
      for size in sorted(first):
        batch = run._batch(first[size], size)
        print(f"packed {size} x {run.pack_length}: {timed(batch):.3f} s/step, "
              f"{int((batch['segment_ids'] > 0).sum())} real tokens", flush=True)
    rows = batches[0][0]
    for length in (16, 32, 64):
      fits = np.where(run.enc_train.lengths[rows] <= length, rows, -1)
      batch = batching.make_batch(run.enc_train, fits, length, run.kind, run.tokenizer.pad_id)
      print(f"padded {len(rows)} x {length}: {timed(batch):.3f} s/step", flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
