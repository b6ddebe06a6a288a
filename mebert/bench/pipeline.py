"""Does the host keep up? Pretraining examples per second per host core, as the trainer reads them.

  python -m mebert.bench.pipeline [--seq-len 128 512] [--workers 0 1 2] [--corpus builtin tfds]
      [--batches 50] [--compile-report REPORT.json ...]

For each corpus, row length and number of grain worker processes, the trainer's own stream
(mebert.data.pipeline.make_pretraining_iterator: sampling, NSP pairs, masking, batching)
is read for --batches batches after --warmup batches, and examples/s is reported, per core: one
core in-process (workers=0), else one per worker (the main process only collects their batches).
  builtin  the built-in corpus, tokenized up front when the stream is built (not timed);
  tfds     a local TFDS array_record corpus (mebert.data.tfds_corpus), documents read and tokenized
           on the fly: by default one made from the built-in corpus's documents under --workdir,
           or --tfds-corpus=tfds:NAME with --tfds-data-dir.
The tokenizer is a sentencepiece model trained on the built-in corpus (kept in --workdir/vocab),
or --vocab (vocab.txt / tokenizer.json / *.model).

--compile-report: JSON lines printed by `python -m mebert.train --mode=compile` for a TPU target;
for each, the host cores needed to feed that slice's host at its roofline rate: (roofline tokens/s
per chip x chips per host / row length) / (examples/s per core at that row length).

Timings are only meaningful on a quiet machine; the JSON line on stdout carries every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # host work only: never take a TPU or GPU from a run

PREDICTIONS = {128: 20, 256: 40, 512: 80}  # BERT's max_predictions_per_seq per row length


def data_config(corpus: str, seq_len: int, workers: int, *, tfds_data_dir: str = "",
                vocab: str = ""):
  from mebert.data.config import default_data_config

  c = default_data_config()
  c.corpus = corpus
  c.tfds_data_dir = tfds_data_dir
  c.vocab = vocab
  c.seq_len = seq_len
  c.max_predictions_per_seq = PREDICTIONS.get(seq_len, round(0.15 * seq_len))
  c.whole_word_masking = False  # as the BERT recipes (the 2018 recipe masks WordPiece tokens)
  c.num_workers = workers
  return c


def builtin_as_tfds(workdir: pathlib.Path) -> tuple[str, str]:
  """The built-in corpus's documents as a local TFDS corpus (made once, kept in workdir)."""
  from mebert.data import corpora, tfds_corpus

  data_dir = workdir / "tfds"
  spec = f"tfds:{tfds_corpus.NAME}/blank_lines"
  if not (data_dir / tfds_corpus.NAME).exists():
    raw = workdir / "builtin_text"
    raw.mkdir(parents=True, exist_ok=True)
    docs = corpora.builtin_documents_cleaned({})
    (raw / "builtin.txt").write_text("\n\n".join(d.replace("\n\n", "\n") for d in docs),
                                     encoding="utf-8")
    spec = tfds_corpus.prepare_text_folder(str(raw), str(data_dir))
  return spec, str(data_dir)


def measure(config, tokenizer, *, batch_size: int, warmup: int, batches: int,
            seed: int = 0) -> dict:
  """examples/s of the train stream, after `warmup` batches (worker start-up, first reads)."""
  from mebert.data import pipeline

  start = time.perf_counter()
  iterator = pipeline.make_pretraining_iterator(config, tokenizer, split="train",
                                                batch_size=batch_size, seed=seed)
  for _ in range(warmup):
    next(iterator)
  setup_s = time.perf_counter() - start
  tokens = 0
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(iterator)
    tokens += int((batch["segment_ids"] != 0).sum())
  elapsed = time.perf_counter() - start
  close = getattr(iterator, "close", None)
  if close is not None:
    close()
  workers = int(config.num_workers)
  examples_per_s = batches * batch_size / elapsed
  return {"corpus": config.corpus, "seq_len": int(config.seq_len), "workers": workers,
          "cores": max(1, workers), "batch_size": batch_size, "batches": batches,
          "seconds": elapsed, "setup_seconds": setup_s, "examples_per_s": examples_per_s,
          "examples_per_s_per_core": examples_per_s / max(1, workers),
          "real_tokens_per_s": tokens / elapsed}


def cores_needed(rows: list[dict], report: dict) -> list[dict]:
  """Host cores a slice's host needs at the report's roofline rate, per measured corpus/workers."""
  from mebert.parallel import tpu_slices

  roof = report.get("roofline") or {}
  rate = roof.get("tokens_per_s_per_chip_upper_bound")
  if not rate or "chip" not in report:
    raise ValueError(f"compile report for {report.get('target') or 'this machine'} has no "
                     "roofline (compile with --config.compile.target=tpu:...)")
  chip = tpu_slices.CHIPS[report["chip"]]
  seq_len = int(report["seq_len"])
  needed = rate * chip.chips_per_host / seq_len  # examples/s one host must feed
  out = []
  for row in rows:
    if row["seq_len"] == seq_len:
      out.append({"target": report.get("target"), "corpus": row["corpus"], "seq_len": seq_len,
                  "workers": row["workers"], "host_examples_per_s_needed": needed,
                  "cores_needed": needed / row["examples_per_s_per_core"],
                  "host_vcpus": chip.host_vcpus})
  return out


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  ap.add_argument("--seq-len", type=int, nargs="+", default=[128, 512])
  ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
  ap.add_argument("--corpus", nargs="+", default=["builtin", "tfds"], choices=["builtin", "tfds"])
  ap.add_argument("--batch-size", type=int, default=32)
  ap.add_argument("--batches", type=int, default=50, help="timed batches per measurement")
  ap.add_argument("--warmup", type=int, default=5, help="untimed batches first")
  ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "mebert-bench-pipeline"),
                  help="where the trained vocabulary and the TFDS copy of the corpus are kept")
  ap.add_argument("--vocab", default="", help="a tokenizer file instead of the trained one")
  ap.add_argument("--vocab-size", type=int, default=8192)
  ap.add_argument("--tfds-corpus", default="", help="tfds:NAME[/CONFIG] instead of the built-in "
                  "corpus's TFDS copy (with --tfds-data-dir)")
  ap.add_argument("--tfds-data-dir", default="")
  ap.add_argument("--compile-report", nargs="*", default=[], metavar="JSON",
                  help="files with the JSON line of `--mode=compile` for a TPU slice")
  args = ap.parse_args(argv)
  try:
    reports = [json.loads(pathlib.Path(p).read_text().strip().splitlines()[-1])
               for p in args.compile_report]
  except (OSError, ValueError, IndexError) as e:
    raise SystemExit(f"error: --compile-report: {e}") from None

  from absl import flags
  from mebert.data.tokenizer import ensure_tokenizer

  flags.FLAGS.mark_as_parsed()  # grain reads absl flags; this is not an absl app
  workdir = pathlib.Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  base = data_config("builtin", 128, 0, vocab=args.vocab)
  base.vocab_size = args.vocab_size
  tokenizer = ensure_tokenizer(base, str(workdir))
  corpora = {}
  for kind in args.corpus:
    if kind == "builtin":
      corpora[kind] = ("builtin", "")
    elif args.tfds_corpus:
      corpora[kind] = (args.tfds_corpus, args.tfds_data_dir)
    else:
      corpora[kind] = builtin_as_tfds(workdir)
  rows = []
  for kind, (spec, data_dir) in corpora.items():
    for seq_len in args.seq_len:
      for workers in args.workers:
        config = data_config(spec, seq_len, workers, tfds_data_dir=data_dir, vocab=args.vocab)
        row = measure(config, tokenizer, batch_size=args.batch_size, warmup=args.warmup,
                      batches=args.batches)
        row["corpus_kind"] = kind
        rows.append(row)
        print(f"{kind:8s} {seq_len:4d} tokens, {workers} worker(s): "
              f"{row['examples_per_s']:9.1f} examples/s, {row['examples_per_s_per_core']:9.1f} "
              f"per core", file=sys.stderr, flush=True)
  needs = [need for report in reports for need in cores_needed(rows, report)]
  for need in needs:
    print(f"{need['target']} at {need['seq_len']} tokens ({need['corpus']}, {need['workers']} "
          f"worker(s)): {need['host_examples_per_s_needed']:,.0f} examples/s per host -> "
          f"{need['cores_needed']:.1f} cores (host has {need['host_vcpus'] or '?'} vCPUs)",
          file=sys.stderr)
  print(json.dumps({"rows": rows, "cores_needed": needs, "cpu_count": os.cpu_count()}))


if __name__ == "__main__":
  main()
