"""RoBERTa-base pretraining (Liu et al. 2019, "RoBERTa: A Robustly Optimized BERT Pretraining
Approach", table 9): masked LM only, no next-sentence prediction, dynamic masking, full-length
512-token rows, large batches (8k sequences), Adam beta2 0.98, peak lr 6e-4 after 24k warmup
steps, 500k steps, byte-level BPE (50,265 tokens).

  python -m mebert.train --config=configs/pretrain/roberta_base.py --workdir=gs://BUCKET/roberta \
      --config.data.corpus=tfds:wikipedia/20230601.en --config.data.vocab=ROBERTA_DIR/tokenizer.json
  python -m mebert.train --config=configs/pretrain/roberta_base.py:tiny --workdir=runs/roberta_tiny

What maps how:
  * dynamic masking: mebert makes every example as a pure function of (seed, epoch, index), so each
    epoch draws new masks (the paper's dynamic masking, not BERT's 10 static copies).
  * input format: the paper's FULL-SENTENCES (section 4.2, the format of its final models):
    data.cross_document=True makes each row one span of whole sentences taken contiguously from
    the concatenated training documents, as many as fit in 512 tokens with [CLS] and a final
    [SEP]; a span runs on across document boundaries with an extra [SEP] between documents, in one
    attention segment, with no NSP (data.next_sentence="none") and no short rows
    (short_seq_prob=0). data.pack is off, since the spans already fill their rows (what is left
    is less than the next sentence) and a second span in a row would be a second attention
    segment. Spans are fixed, the masks are drawn again each epoch (mebert/data/spans.py). On a
    local corpus every training token is in exactly one span per epoch; on a TFDS corpus (read
    lazily) spans cross documents within groups of consecutive documents, not between groups.
    With data.cross_document=False the rows would be the paper's DOC-SENTENCES.
  * the model is family "roberta": positions numbered from pad_token_id + 1 (fairseq's
    make_positions), one token type, no pooler or NSP head; it exports as RobertaForMaskedLM.
  * 8k sequences of 512 tokens: grad_accum_steps splits the batch where memory is short; the
    paper's 8k batch ran on 1024 V100s.
"""

from mebert.model.config import bert_size
from mebert.train.defaults import model_defaults, pretrain_defaults


def roberta_model(size: str, vocab_size: int, pad_token_id: int):
  return model_defaults(**bert_size(size), vocab_size=vocab_size, family="roberta",
                        max_position_embeddings=512 + pad_token_id + 1, type_vocab_size=1,
                        pad_token_id=pad_token_id, position_offset=pad_token_id + 1,
                        layer_norm_eps=1e-5)


def get_config(arg=None):
  size = arg or "base"
  if size not in ("base", "tiny"):
    raise ValueError(f"config argument {size!r}: expected base or tiny")
  c = pretrain_defaults()
  c.data.next_sentence = "none"
  c.data.short_seq_prob = 0.0
  c.data.cross_document, c.data.pack = True, False  # FULL-SENTENCES (see the docstring)
  c.data.masked_lm_prob = 0.15
  c.train.b2, c.train.eps, c.train.weight_decay = 0.98, 1e-6, 0.01
  c.train.schedule = "linear"
  if size == "base":
    # roberta-base's tokenizer.json (vocab 50265, <pad> = 1): pass it as data.vocab.
    c.model = roberta_model("base", 50265, pad_token_id=1)
    c.data.seq_len, c.data.max_predictions_per_seq = 512, 80
    c.train.batch_size, c.train.learning_rate = 8192, 6e-4
    c.train.num_steps, c.train.warmup_steps = 500_000, 24_000
    c.checkpoint.every_steps = c.eval.every_steps = 5_000
    return c
  # Tiny CPU variant: the built-in corpus and a sentencepiece vocabulary trained from it ([PAD] = 0,
  # so positions start at row 1), 2 layers x 128, 128-token rows.
  c.model = roberta_model("tiny", 0, pad_token_id=0)
  c.model.max_position_embeddings = 129
  c.model.dropout_rate = c.model.attention_dropout_rate = 0.0
  c.data.corpus, c.data.vocab_size, c.data.eval_fraction = "builtin", 8000, 0.1
  c.data.seq_len, c.data.max_predictions_per_seq = 128, 20
  c.train.batch_size, c.train.num_steps, c.train.learning_rate = 32, 600, 2e-3
  c.train.warmup_steps, c.train.log_every = 60, 50
  c.checkpoint.every_steps = c.eval.every_steps = 200
  c.eval.num_batches = 10
  return c
