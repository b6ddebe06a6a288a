"""CLI: convert between Hugging Face BERT folders and mebert workdirs.

  python -m mebert.interop import-hf --from=HF_DIR --to=WORKDIR [--scan_layers] [--allow-pickle]
  python -m mebert.interop export-hf --from=WORKDIR --to=HF_DIR [--step=N]

Both run the parity gate (mebert vs transformers on real sentences, max abs diff <= 1e-4) when torch
and transformers are importable; --no-parity skips it. Errors print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from mebert import host_memory
from mebert.interop.errors import InteropError


def _parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="python -m mebert.interop", description=__doc__.split("\n")[0])
  sub = ap.add_subparsers(dest="command", required=True)
  imp = sub.add_parser("import-hf", help="Hugging Face BERT folder -> mebert workdir checkpoint")
  imp.add_argument("--from", dest="src", required=True, help="folder with config.json, "
                   "model.safetensors, vocab.txt or tokenizer.json")
  imp.add_argument("--to", dest="dst", required=True, help="mebert workdir to create")
  imp.add_argument("--scan_layers", "--scan-layers", action="store_true",
                   help="stack the layers for model.scan_layers=True")
  imp.add_argument("--allow_pickle", "--allow-pickle", action="store_true",
                   help="read a pickled pytorch_model.bin (torch.load(weights_only=True))")
  imp.add_argument("--step", type=int, default=0)
  exp = sub.add_parser("export-hf", help="mebert workdir checkpoint -> Hugging Face folder")
  exp.add_argument("--from", dest="src", required=True, help="mebert workdir")
  exp.add_argument("--to", dest="dst", required=True, help="folder to write")
  exp.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  for p in (imp, exp):
    p.add_argument("--parity", action=argparse.BooleanOptionalAction, default=True,
                   help="run the mebert-vs-transformers parity gate (needs torch)")
  return ap


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  host_memory.configure()  # before JAX starts: the opt-in host tuning (mebert/host_memory.py)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  from mebert.interop import workdir

  try:
    if args.command == "import-hf":
      report = workdir.import_to_workdir(args.src, args.dst, scan_layers=args.scan_layers,
                                         allow_pickle=args.allow_pickle, parity=args.parity,
                                         step=args.step)
    else:
      report = workdir.export_workdir(args.src, args.dst, step=args.step, parity=args.parity)
  except InteropError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(report.summary())
  return 0


if __name__ == "__main__":
  sys.exit(main())
