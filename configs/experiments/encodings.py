"""The encodings ablation: one tiny BERT per encoding variant, same corpus, budget and seed.

  python -m mebert.train --config=configs/experiments/encodings.py:rotary --workdir=runs/enc/rotary
  python -m mebert.train --config=configs/experiments/encodings.py:rotary --workdir=runs/enc/rotary \
      --mode=eval --config.data.seq_len=256          # 4x the training length

The argument names the variant (VARIANTS below; default "learned", BERT itself). Every variant is
the same 2-layer, 128-wide model trained for the same steps on the same examples; only the model keys
in its VARIANTS entry differ. The learned table has exactly `seq_len` rows, so evaluating a learned
model at a longer length stops with a clear "cannot extrapolate" error instead of reading untrained
rows. `max_predictions_per_seq` follows `seq_len` (15%, rounded up), so an eval at 2x or 4x masks
the same share of tokens as training. `python -m mebert.experiments.encodings` runs every variant,
the evals at 1x/2x/4x and the report (docs/encodings.md).

Corpus: WikiText-2 (valid split) plus 14 Gutenberg books for training; the WikiText-2 test split,
whose paragraphs are long enough to fill 4x-length rows, for evaluation. MEBERT_SHARED_DATA names
the folder that holds wikitext-2-raw/ and gutenberg-nltk/ (the project's data folder).
"""

import os
import pathlib

from mebert.model.config import bert_size
from mebert.train.defaults import model_defaults, pretrain_defaults

# variant -> model keys that differ from BERT (learned positions, sum fusion, post-LN, GELU, biases).
VARIANTS = {
    "learned": {},
    "sinusoidal": dict(position_encoding="sinusoidal"),
    "relative": dict(position_encoding="relative"),
    "rotary": dict(position_encoding="rotary"),
    "alibi": dict(position_encoding="alibi"),
    "none": dict(position_encoding="none"),
    "concat": dict(encoding_fusion="concat"),  # learned positions, concatenated then projected
    "preln_geglu": dict(pre_layer_norm=True, hidden_act="geglu"),  # learned positions
    # ModernBERT's attention pattern at this depth: layer 0 global, layer 1 a sliding window of 32
    # (|i - j| <= 16, half the training length): does a bounded window help at 2x and 4x?
    "rotary_local": dict(position_encoding="rotary", local_attention_window=32,
                         global_attention_every=2),
}
TRAIN_SEQ_LEN = 64


def shared_data() -> pathlib.Path:
  """The folder with wikitext-2-raw/ and gutenberg-nltk/: MEBERT_SHARED_DATA. Unset, the corpus
  paths name the variable, so a run stops with "MEBERT_SHARED_DATA-unset/...: no such file"."""
  return pathlib.Path(os.environ.get("MEBERT_SHARED_DATA", "MEBERT_SHARED_DATA-unset"))


def get_config(arg=None):
  variant = arg or "learned"
  if variant not in VARIANTS:
    raise ValueError(f"encodings.py: unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
  data = shared_data()
  c = pretrain_defaults()
  c.model = model_defaults(**bert_size("tiny"), max_position_embeddings=TRAIN_SEQ_LEN,
                           dropout_rate=0.0, attention_dropout_rate=0.0, **VARIANTS[variant])
  c.data.corpus = ",".join([str(data / "wikitext-2-raw" / "wiki.valid.raw"),
                            str(data / "gutenberg-nltk" / "*.txt")])
  c.data.eval_corpus = str(data / "wikitext-2-raw" / "wiki.test.raw")
  c.data.vocab_size = 8000
  c.data.seq_len = TRAIN_SEQ_LEN
  c.data.max_predictions_per_seq = (c.data.get_ref("seq_len") * 3 + 19) // 20  # ceil(15%)
  # MLM only: a row is one span of a document, at every eval length, and the budget goes to MLM.
  c.data.next_sentence = "none"
  c.train.batch_size = 32
  c.train.num_steps = 600
  c.train.learning_rate = 1e-3  # 2e-3 left BERT (post-LN) at the unigram plateau for 350 steps
  c.train.warmup_steps = 60
  c.train.log_every = 50
  c.checkpoint.every_steps = 600
  c.checkpoint.keep = 1
  c.eval.every_steps = 600
  c.eval.num_batches = 16
  return c
