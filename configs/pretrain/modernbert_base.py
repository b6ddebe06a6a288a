"""ModernBERT-base pretraining (Warner et al. 2024, "Smarter, Better, Faster, Longer"), in two
phases: 1,024-token rows with RoPE base 10k in every layer, then a context extension to 8,192
tokens with the global layers' base raised to 160k (local layers keep 10k), as the paper did.

  python -m mebert.train --config=configs/pretrain/modernbert_base.py:phase1 --workdir=gs://B/mb1 \
      --config.data.corpus=... --config.data.vocab=MODERNBERT_DIR/tokenizer.json
  python -m mebert.train --config=configs/pretrain/modernbert_base.py:context --workdir=gs://B/mb2 \
      --config.init.checkpoint=gs://B/mb1 ...
  python -m mebert.train --config=configs/pretrain/modernbert_base.py:tiny --workdir=runs/mb_tiny
  python -m mebert.train --config=configs/pretrain/modernbert_base.py:tiny_context \
      --workdir=runs/mb_tiny_8k --config.init.checkpoint=runs/mb_tiny

The architecture: 22 pre-LN layers x 768 (12 heads), GeGLU 1152, no biases (nor LayerNorm biases),
rotary positions, no token types, a normalised embedding and none before layer 0's attention,
global attention every third layer and a 128-token sliding window (|i - j| <= 64) elsewhere; it
exports as ModernBertForMaskedLM. The objective: 30% masking, no next-sentence task.
The optimizer is the paper's: StableAdamW (b2 0.98, eps 1e-6, weight decay 1e-5), with warmup
then a constant rate (phase 1) and the decay in the context phase, its warmup-stable-decay
schedule. Differences: no batch-size warmup. Unpadding: mebert's packed rows
(segment ids, positions restarting per example) play the role of ModernBERT's unpadded sequences.
"""

from mebert.train.defaults import model_defaults, pretrain_defaults

PHASES = ("phase1", "context", "tiny", "tiny_context")


def modernbert_model(**overrides):
  values = dict(family="modernbert", vocab_size=50368, hidden_size=768, num_layers=22,
                num_heads=12, intermediate_size=1152, hidden_act="geglu", pre_layer_norm=True,
                use_bias=False, layer_norm_bias=False, layer_norm_eps=1e-5,
                position_encoding="rotary", use_segment_embeddings=False,
                first_layer_attention_norm=False, local_attention_window=128,
                global_attention_every=3, rotary_base=10_000.0, local_rotary_base=10_000.0,
                max_position_embeddings=8192, dropout_rate=0.0, attention_dropout_rate=0.0,
                pad_token_id=50283)
  values.update(overrides)
  return model_defaults(**values)


def get_config(arg=None):
  phase = arg or "phase1"
  if phase not in PHASES:
    raise ValueError(f"config argument {phase!r}: expected one of {PHASES}")
  tiny = phase.startswith("tiny")
  context = phase.endswith("context")
  c = pretrain_defaults()
  c.data.next_sentence = "none"
  c.data.short_seq_prob = 0.0
  c.data.masked_lm_prob = 0.3
  c.train.optimizer = "stable_adamw"
  c.train.b2, c.train.eps, c.train.weight_decay = 0.98, 1e-6, 1e-5
  c.train.schedule = "linear" if context else "constant"
  if tiny:
    # 4 layers x 128 (global 0 and 3, local 1-2), the built-in corpus and a trained sentencepiece
    # vocabulary ([PAD] = 0): the recipe at 1,024 tokens, small enough for a CPU.
    c.model = modernbert_model(vocab_size=0, hidden_size=128, num_layers=4, num_heads=2,
                               intermediate_size=192, pad_token_id=0)
    c.data.corpus, c.data.vocab_size, c.data.eval_fraction = "builtin", 8000, 0.1
    c.train.batch_size, c.train.log_every = 8, 25
    c.eval.num_batches = 5
  else:
    c.model = modernbert_model()
    c.data.vocab_size = 50368
    c.train.batch_size = 4608  # ~4.7M tokens per batch at 1,024 tokens, the paper's final size
  if context:
    # Extension: 8,192 tokens, global layers' RoPE base raised to 160k; start from phase 1.
    c.model.rotary_base = 160_000.0
    c.data.seq_len = 8192
    c.data.max_predictions_per_seq = int(0.3 * 8192)
    c.train.learning_rate = 3e-4
    if tiny:
      c.data.seq_len, c.data.max_predictions_per_seq = 2048, int(0.3 * 2048)
      c.train.batch_size, c.train.num_steps, c.train.warmup_steps = 4, 100, 10
      c.checkpoint.every_steps = c.eval.every_steps = 50
    else:
      c.train.batch_size = 4608 // 8  # the same tokens per batch
      c.train.num_steps, c.train.warmup_steps = 50_000, 1_000
      c.checkpoint.every_steps = c.eval.every_steps = 2_000
    return c
  c.data.seq_len = 1024
  c.data.max_predictions_per_seq = int(0.3 * 1024)
  c.train.learning_rate = 8e-4
  if tiny:
    c.train.learning_rate = 2e-3
    c.train.num_steps, c.train.warmup_steps = 300, 30
    c.checkpoint.every_steps = c.eval.every_steps = 100
  else:
    c.train.num_steps, c.train.warmup_steps = 360_000, 2_000
    c.checkpoint.every_steps = c.eval.every_steps = 5_000
  return c
