"""How much of the pretraining rows is padding, unpacked and packed (data.pack), per sequence length.

  python -m mebert.data.padding_report --config=configs/pretrain/tiny.py --workdir=/tmp/pad \
      --config.data.corpus=/data/wiki.valid.raw,/data/wiki.test.raw --seq_lens=128,512

Reads the training split of `data.corpus` through the trainer's own pipeline (same tokenizer,
examples and packer) and prints, for each length: the padding fraction (pad tokens / all tokens)
of the rows without and with packing, the examples per packed row, and the rows (so steps) that
packing saves. The vocabulary is `data.vocab`, or one trained into WORKDIR/vocab as the trainer
would. `max_predictions_per_seq` scales with the length (20 at 128 -> 80 at 512, as BERT's).
"""

from __future__ import annotations

import copy
import json
import logging

from absl import app, flags
from ml_collections import config_flags

from mebert.data import packing, pipeline
from mebert.data.tokenizer import ensure_tokenizer


def padding_fractions(data_config, tokenizer, seq_len: int, examples: int, seed: int = 0) -> dict:
  """Padding of the first `examples` training examples, one per row and packed."""
  c = copy.deepcopy(data_config)
  c.max_predictions_per_seq = max(1, round(int(c.max_predictions_per_seq) * seq_len / int(c.seq_len)))
  c.seq_len = seq_len
  batch = 64
  out = {"seq_len": seq_len, "max_predictions_per_seq": c.max_predictions_per_seq}
  for pack in (False, True):
    c.pack = pack
    it = pipeline.make_pretraining_iterator(c, tokenizer, split="train", batch_size=batch, seed=seed)
    rows = pad = seen = 0
    while seen < examples:
      b = next(it)
      rows += batch
      pad += int((b["segment_ids"] == 0).sum())
      seen += int((b["example_ids"] >= 0).sum())
    key = "packed" if pack else "unpacked"
    out[f"{key}_padding"] = pad / (rows * seq_len)
    out[f"{key}_rows"] = rows
    out[f"{key}_examples"] = seen
  layout = packing.pack_layout(c)
  out["pack_max_examples"], out["pack_max_predictions"] = layout.max_examples, layout.max_predictions
  out["examples_per_packed_row"] = out["packed_examples"] / out["packed_rows"]
  # Rows per example, packed against unpacked: the share of steps packing saves on this corpus.
  out["rows_saved"] = 1 - (out["packed_rows"] / out["packed_examples"]) / (
      out["unpacked_rows"] / out["unpacked_examples"])
  return out


def main(argv):
  del argv
  logging.basicConfig(level=logging.WARNING)
  config = _CONFIG.value
  tokenizer = ensure_tokenizer(config.data, _WORKDIR.value)
  if not _JSON.value:
    print(f"corpus: {config.data.corpus}  (one_doc_per_file={config.data.one_doc_per_file}, "
          f"short_seq_prob={config.data.short_seq_prob}, vocabulary {tokenizer.vocab_size})")
    print(f"{'seq_len':>7} {'unpacked pad':>12} {'packed pad':>10} {'slots':>5} {'ex/row':>6} "
          f"{'rows saved':>10}")
  for seq_len in (int(s) for s in _SEQ_LENS.value):
    r = padding_fractions(config.data, tokenizer, seq_len, _EXAMPLES.value, int(config.seed))
    if _JSON.value:
      print(json.dumps(r, sort_keys=True))
    else:
      print(f"{seq_len:>7} {r['unpacked_padding']:>12.1%} {r['packed_padding']:>10.1%} "
            f"{r['pack_max_examples']:>5} {r['examples_per_packed_row']:>6.2f} {r['rows_saved']:>10.1%}")


if __name__ == "__main__":
  # Flags are defined only when run as a program: tests import padding_fractions beside other
  # modules that define --config, and absl refuses a flag defined twice.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Pretraining config file.")
  _WORKDIR = flags.DEFINE_string("workdir", None, "Where a trained vocabulary is kept.")
  _SEQ_LENS = flags.DEFINE_list("seq_lens", ["128", "512"], "Row lengths to report.")
  _EXAMPLES = flags.DEFINE_integer("examples", 4096, "Examples read per length and layout.")
  _JSON = flags.DEFINE_bool("json", False, "Print one JSON line per length instead of a table.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
