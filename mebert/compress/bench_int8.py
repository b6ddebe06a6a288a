"""Benchmark: int8 vs fp32 sentence embeddings of SST-2 with all-MiniLM-L6-v2, same run.

  python -m mebert.compress.bench_int8 --data=SST2_DIR/train.tsv [--n=1000] [--batch_size=64] [--rounds=3] [--model=HF_DIR]

Embeds the first N SST-2 training sentences (mean pooling, L2 normalisation, as sentence-transformers)
with fp32 weights and with int8 weights (mebert.embed --quantize=int8). Prints the weight bytes of
each, the cosine between the two sets of vectors (min and mean), and sentences/s of each: a first
pass (with compiles), then the two alternate for --rounds timed passes each (best kept), so
drifting background load favours neither.
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np

from mebert import embed, host_memory
from mebert.compress import quantize as quantize_lib
from mebert.interop import bench_embed


def main(argv=None) -> dict:
  args = bench_embed.parse_args(__doc__.split("\n")[0], argv, n=1000, rounds=3)
  host_memory.configure()  # before JAX starts: the opt-in host tuning (mebert/host_memory.py)
  model_dir, sentences = bench_embed.model_and_sentences(args)
  n = len(sentences)
  import jax

  print(f"{n} SST-2 sentences, batch {args.batch_size}, {model_dir}")
  print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"jax {jax.__version__} on {jax.devices()[0].platform}")
  encoder = embed.load_encoder(model_dir)
  r = quantize_lib.report(quantize_lib.quantize_params(encoder.params))
  print(f"weights: fp32 {r['fp32_bytes'] / 1e6:.1f} MB, int8 {r['weight_bytes'] / 1e6:.1f} MB "
        f"(int8 values + float32 scales + float biases/LayerNorm) = "
        f"{100 * r['weight_bytes_ratio']:.1f}% of fp32; {100 * r['quantized_fraction']:.2f}% of "
        "parameters quantized")

  def run(mode):
    return embed.embed_sentences(encoder, sentences, pooling="mean", normalize=True,
                                 batch_size=args.batch_size, progress=False, quantize=mode)

  timings, out = {}, {}
  for mode in ("none", "int8"):
    start = time.perf_counter()
    out[mode] = run(mode)
    timings[f"{mode}, first pass (incl. compiles)"] = time.perf_counter() - start
  best = {"none": float("inf"), "int8": float("inf")}
  for _ in range(args.rounds):
    for mode in best:
      start = time.perf_counter()
      run(mode)
      best[mode] = min(best[mode], time.perf_counter() - start)
  for mode, seconds in best.items():
    timings[f"{mode}, compiled (best of {args.rounds})"] = seconds
  for name, seconds in timings.items():
    print(f"{name.replace('none', 'fp32'):40s} {n / seconds:9.1f} sentences/s  ({seconds:.2f} s)")
  cos = (out["none"] * out["int8"]).sum(1)  # both L2-normalised
  print(f"cosine int8 vs fp32: min {cos.min():.5f}, mean {cos.mean():.5f}, "
        f"5th percentile {np.percentile(cos, 5):.5f}")
  print(f"int8 / fp32 time: {best['int8'] / best['none']:.2f}")
  return {"cos_min": float(cos.min()), "cos_mean": float(cos.mean()), **r,
          "fp32_s": best["none"], "int8_s": best["int8"]}


if __name__ == "__main__":
  main()
