"""ELECTRA-Small pretraining (Clark et al. 2020, "ELECTRA: Pre-training Text Encoders as
Discriminators Rather Than Generators", tables 6-7): a discriminator of 12 layers x 256 (4 heads,
128-wide embeddings projected to 256) trained with a generator a quarter of its width on replaced-
token detection (loss weight 50) plus the generator's MLM; 15% masking, 128-token rows, batch 128,
lr 5e-4 with 10k warmup, 1M steps, BERT's uncased WordPiece vocabulary.

  python -m mebert.train --config=configs/pretrain/electra_small.py --workdir=gs://BUCKET/electra \
      --config.data.corpus=tfds:wikipedia/20230601.en --config.data.vocab=PATH/vocab.txt
  python -m mebert.train --config=configs/pretrain/electra_small.py:tiny --workdir=runs/electra_tiny
  python -m mebert.interop export-hf --from=runs/electra_tiny --to=runs/electra_tiny_hf  # the discriminator

The discriminator is model.*; the generator's shape follows it (mebert.model.electra.ElectraConfig:
hidden = generator_size x 256 = 64, heads = hidden / 64, intermediate = 4 x hidden), and both share
the token, position and type embeddings. No next-sentence task: data.next_sentence="none".

Masking follows the released code, google-research/electra pretrain/pretrain_helpers.py `mask()`
(mask_prob 0.15 from configure_pretraining.py): of the chosen 15% of tokens, 85% become [MASK] in
the generator's input (`tf.less(tf.random.uniform([B, N]), 0.85)`) and the rest keep their
token; none is a random token. Hence data.mask_token_prob = 0.85, data.random_token_prob = 0, not
BERT's 0.8 / 0.1. (The paper's section 2 writes REPLACE(x, m, [MASK]), i.e. all of them; set
mask_token_prob = 1 for that.) The discriminator sees the generator's sample at every chosen
position, kept ones included, as in the code. The paper's generator-size ablation found 1/4-1/2
of the discriminator's width best.
"""

from mebert.train.defaults import model_defaults, pretrain_defaults


def get_config(arg=None):
  size = arg or "small"
  if size not in ("small", "tiny"):
    raise ValueError(f"config argument {size!r}: expected small or tiny")
  c = pretrain_defaults()
  c.train.objective = "electra"
  c.electra.generator_size = 0.25
  c.electra.rtd_weight = 50.0
  c.data.next_sentence = "none"
  c.data.masked_lm_prob = 0.15
  c.data.mask_token_prob, c.data.random_token_prob = 0.85, 0.0  # see the docstring
  c.train.eps, c.train.weight_decay = 1e-6, 0.01
  if size == "small":
    c.model = model_defaults(family="electra", vocab_size=30522, hidden_size=256, num_layers=12,
                             num_heads=4, intermediate_size=1024, embedding_size=128)
    c.data.vocab_size = 30522
    c.data.seq_len, c.data.max_predictions_per_seq = 128, 20
    c.train.batch_size, c.train.learning_rate = 128, 5e-4
    c.train.num_steps, c.train.warmup_steps = 1_000_000, 10_000
    c.checkpoint.every_steps = c.eval.every_steps = 10_000
    return c
  # Tiny CPU variant (the built-in corpus, a trained sentencepiece vocabulary): a 2 x 128
  # discriminator with 64-wide embeddings and a 32-wide generator; the same shape as
  # configs/pretrain/tiny.py's BERT, for the equal-wall-time comparison (docs/families.md).
  c.model = model_defaults(family="electra", hidden_size=128, num_layers=2, num_heads=2,
                           intermediate_size=512, embedding_size=64, max_position_embeddings=128,
                           dropout_rate=0.0, attention_dropout_rate=0.0)
  c.data.corpus, c.data.vocab_size, c.data.eval_fraction = "builtin", 8000, 0.1
  c.data.seq_len, c.data.max_predictions_per_seq = 128, 20
  c.train.batch_size, c.train.num_steps, c.train.learning_rate = 32, 600, 2e-3
  c.train.warmup_steps, c.train.log_every = 60, 50
  c.checkpoint.every_steps = c.eval.every_steps = 200
  c.eval.num_batches = 10
  return c
