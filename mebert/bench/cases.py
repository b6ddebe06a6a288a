"""The benchmark cases: model size, batch shape and data kind of each."""

from __future__ import annotations

import dataclasses

from mebert.model.config import bert_size


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  size: dict  # hidden_size, num_layers, num_heads, intermediate_size
  batch_size: int
  seq_len: int
  max_predictions: int  # masked-LM slots per row (google-research/bert's max_predictions_per_seq)
  data: str = "synthetic"  # "synthetic": full-length rows; "text": mebert's pipeline on real text
  data_config: str = ""  # text cases: the config file (":ARG") whose data settings are used
  vocab_size: int = 30522  # bert-base-uncased's WordPiece vocabulary
  note: str = ""

  @property
  def tokens_per_step(self) -> int:
    return self.batch_size * self.seq_len


CASES = {
    # A 1-layer, 32-wide model: only for checking the harness end to end (tests/bench).
    "micro": Case("micro", dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
                  batch_size=4, seq_len=32, max_predictions=5, vocab_size=512,
                  note="harness check only; timings mean nothing"),
    "mini-128": Case("mini-128", bert_size("mini"), batch_size=32, seq_len=128, max_predictions=20),
    "base-128": Case("base-128", bert_size("base"), batch_size=8, seq_len=128, max_predictions=20),
    # 2 x 512 = 1024 tokens a step, as base-128's 8 x 128: the same token count with 4x longer
    # attention. 8 x 512 fits in memory too but takes ~4x as long a step on a 2-core CPU.
    "base-512": Case("base-512", bert_size("base"), batch_size=2, seq_len=512, max_predictions=76,
                     note="batch 2 x 512 (same 1024 tokens per step as base-128)"),
    # The scaling sweep (BENCHMARKS.md "Scaling"): each size at 128, 256 and 512 tokens with its
    # token count per step held fixed (the batch shrinks as rows grow), so step time against length
    # shows what longer attention costs; max_predictions is 15% of the row, as base-512's.
    "mini-256": Case("mini-256", bert_size("mini"), batch_size=16, seq_len=256, max_predictions=38),
    "mini-512": Case("mini-512", bert_size("mini"), batch_size=8, seq_len=512, max_predictions=76),
    "small-128": Case("small-128", bert_size("small"), batch_size=16, seq_len=128, max_predictions=20),
    "small-256": Case("small-256", bert_size("small"), batch_size=8, seq_len=256, max_predictions=38),
    "small-512": Case("small-512", bert_size("small"), batch_size=4, seq_len=512, max_predictions=76),
    "base-256": Case("base-256", bert_size("base"), batch_size=4, seq_len=256, max_predictions=38),
    # Real text through mebert's own pretraining pipeline with the data settings of the tiny
    # config (128 tokens, 20 predictions; packed where the pipeline packs) and of BERT-base's
    # phase 2 (512, 80); the peers train on the same examples padded per batch (batches.py).
    # bert-mini, so they compare with mini-128 and mini-512 (the same tokens per step).
    "text-128": Case("text-128", bert_size("mini"), batch_size=32, seq_len=128, max_predictions=20,
                     data="text", data_config="configs/pretrain/tiny.py"),
    "text-512": Case("text-512", bert_size("mini"), batch_size=8, seq_len=512, max_predictions=80,
                     data="text", data_config="configs/pretrain/bert_base.py:phase2"),
}


def get_case(name: str, **overrides) -> Case:
  if name not in CASES:
    raise SystemExit(f"unknown --case={name!r}; known: {', '.join(CASES)}")
  changes = {k: v for k, v in overrides.items() if v is not None}
  return dataclasses.replace(CASES[name], **changes)
